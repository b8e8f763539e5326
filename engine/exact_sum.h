// An exact running sum of floating-point tensors, for rebuilding SLiM start states by
// subtraction without rounding drift (docs/engine.md, "Exact subtraction").
//
// Each element of the sum is held as a fixed-point integer wide enough for every finite value
// of the dtype: 32-bit limbs, the lowest bit worth the dtype's smallest subnormal. Adding a float is exact, so additions commute and
// Subtract(x) undoes Add(x) bit for bit whatever the magnitudes involved: after
//   Add(a); Add(b); Subtract(b)
// Value() returns exactly what it returned after Add(a). Floating-point subtraction cannot
// promise that: end − slice loses everything below the rounding unit of `end`, which on trained
// weights (favor+ key features spanning many orders of magnitude) is larger than the start
// state being rebuilt.
//
// Value() rounds the exact sum to the dtype (within one unit in the last place; a
// deterministic function of the exact sum). A non-finite input poisons its element: Value()
// is NaN there from then on (a state that met inf or NaN is not a number either way).
//
// Memory: (limbs · 4 + 1) bytes per element — 37 for fp32 (9 limbs), 269 for fp64 (67 limbs,
// used by tests only). On CPU the work runs as plain loops; elsewhere as LibTorch integer ops
// (with a transient of twice the limbs per call).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace slim {

class ExactSum {
 public:
  ExactSum() = default;
  // A zero sum with the shape, dtype (fp32 or fp64) and device of `like`.
  explicit ExactSum(const at::Tensor& like);

  // x must have this sum's shape and dtype; any strides, no autograd.
  void Add(const at::Tensor& x) { Accumulate(x, /*negate=*/false); }
  void Subtract(const at::Tensor& x) { Accumulate(x, /*negate=*/true); }

  // The sum rounded to the dtype: a new contiguous tensor of the sum's shape.
  at::Tensor Value() const;

  bool defined() const { return limbs_.defined(); }
  // 32-bit limbs per element for a dtype (9 for fp32, 67 for fp64).
  static int64_t LimbsFor(at::ScalarType dtype);
  // Bytes this sum holds per summed element (limbs and the poison flag).
  static int64_t BytesPerElement(at::ScalarType dtype) { return LimbsFor(dtype) * 4 + 1; }

  // Tests: run the LibTorch-ops implementation even on CPU (it must agree bit for bit).
  static void ForceGenericForTesting(bool force);

 private:
  void Accumulate(const at::Tensor& x, bool negate);

  // (numel, limbs) int32, normalized: limbs 0..n−2 are digits in [0, 2^32) (as the int32 with
  // the same bits), the top one is signed.
  at::Tensor limbs_;
  at::Tensor poison_;  // (numel) bool: a non-finite value was added
  at::ScalarType dtype_ = at::kFloat;
  std::vector<int64_t> shape_;
};

}  // namespace slim
