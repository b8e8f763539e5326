#include "engine/exact_sum.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace slim {

// Layout. Element e of the sum is Σ_j limb[e][j] · 2^(32j + low_exp), kept normalized: limbs
// 0..n−2 are digits in [0, 2^32) (stored as the int32 with the same bits), the top limb is a
// signed int32 (two's complement over all limbs). A float x = m · 2^q (m the integer
// significand with its hidden bit, q the exponent of its last bit) has its last bit at position
// p = q − low_exp ≥ 0, so m·2^(p mod 32) (below 2^55 for fp32, 2^85 for fp64) is split into
// 32-bit digits added at limbs ⌊p/32⌋, ⌊p/32⌋+1 (, +2), with the carry rippled upwards.

namespace {

struct Format {
  int mantissa_bits;   // stored significand bits (23, 52)
  int exponent_mask;   // all-ones exponent field: inf/NaN
  int low_exp;         // exponent of the smallest subnormal's bit (−149, −1074)
  int64_t limbs;
};

// fp32: positions 0..276 (2^-149 .. 2^128) plus headroom: 9 limbs reach 2^138 (the top one
// signed). fp64: positions 0..2097 plus headroom: 67 limbs.
Format FormatOf(at::ScalarType dtype) {
  if (dtype == at::kDouble) return {52, 0x7ff, -1074, 67};
  TORCH_CHECK(dtype == at::kFloat, "ExactSum: fp32 or fp64 tensors only, got ", dtype);
  return {23, 0xff, -149, 9};
}

constexpr int64_t kDigit = int64_t{1} << 32;
constexpr int64_t kDigitMask = kDigit - 1;

std::atomic<bool> force_generic{false};

// ---- CPU loops ----

// Adds sign · Σ_t digits[t] · 2^(32(first + t)) to the normalized limbs L, rippling the carry.
inline void AddDigits(int32_t* L, int64_t nl, int64_t first, const int64_t* digits, int count, int64_t sign) {
  int64_t carry = 0;
  for (int64_t j = first, t = 0; j < nl; ++j, ++t) {
    if (t >= count && carry == 0) return;
    const bool top = j == nl - 1;
    int64_t v = top ? int64_t{L[j]} : int64_t{static_cast<uint32_t>(L[j])};
    v += carry + (t < count ? sign * digits[t] : 0);
    if (top) {
      L[j] = static_cast<int32_t>(v);  // within range by the headroom above
      return;
    }
    L[j] = static_cast<int32_t>(static_cast<uint32_t>(v & kDigitMask));
    carry = v >> 32;  // arithmetic shift: floor(v / 2^32)
  }
}

template <typename scalar_t>
void AddCpu(const scalar_t* x, int64_t n, bool negate, const Format& f, int32_t* limbs, bool* poison) {
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      int64_t digits[3];
      int count;
      uint64_t p;
      bool negative;
      if constexpr (std::is_same_v<scalar_t, float>) {
        uint32_t bits;
        std::memcpy(&bits, x + e, sizeof bits);
        const uint32_t E = (bits >> 23) & 0xff;
        if (E == 0xff) {
          poison[e] = true;
          continue;
        }
        const uint64_t m = (bits & 0x7fffffu) | (E != 0 ? 0x800000u : 0u);
        if (m == 0) continue;
        p = E != 0 ? E - 1 : 0;
        const uint64_t v = m << (p & 31);
        digits[0] = static_cast<int64_t>(v & kDigitMask);
        digits[1] = static_cast<int64_t>(v >> 32);
        count = 2;
        negative = (bits >> 31) != 0;
      } else {
        uint64_t bits;
        std::memcpy(&bits, x + e, sizeof bits);
        const uint64_t E = (bits >> 52) & 0x7ff;
        if (E == 0x7ff) {
          poison[e] = true;
          continue;
        }
        const uint64_t m = (bits & ((uint64_t{1} << 52) - 1)) | (E != 0 ? uint64_t{1} << 52 : 0);
        if (m == 0) continue;
        p = E != 0 ? E - 1 : 0;
        const unsigned __int128 v = static_cast<unsigned __int128>(m) << (p & 31);
        digits[0] = static_cast<int64_t>(static_cast<uint64_t>(v) & kDigitMask);
        digits[1] = static_cast<int64_t>(static_cast<uint64_t>(v >> 32) & kDigitMask);
        digits[2] = static_cast<int64_t>(static_cast<uint64_t>(v >> 64));
        count = 3;
        negative = (bits >> 63) != 0;
      }
      AddDigits(limbs + e * f.limbs, f.limbs, static_cast<int64_t>(p >> 5), digits, count,
                negative != negate ? -1 : 1);
    }
  });
}

// Magnitude first (a negative number's two's complement has all-ones limbs up to the top,
// whose scaled values would overflow a double for fp64), then the top limb first: the partial
// sums are exact until the value's leading 53 bits are in, so the double is within an ulp of
// the exact sum whatever cancelled.
template <typename scalar_t>
void ValueCpu(int64_t n, const Format& f, const int32_t* limbs, const bool* poison, scalar_t* out) {
  // 2^(32j + low_exp); fp64's top limbs overflow to inf, which only a value beyond the dtype's
  // range multiplies (zero limbs are skipped).
  std::vector<double> scales(static_cast<size_t>(f.limbs));
  for (int64_t j = 0; j < f.limbs; ++j) scales[j] = std::ldexp(1.0, static_cast<int>(32 * j + f.low_exp));
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> mag(static_cast<size_t>(f.limbs));
    for (int64_t e = begin; e < end; ++e) {
      const int32_t* L = limbs + e * f.limbs;
      const bool negative = L[f.limbs - 1] < 0;
      // −value limb by limb: the complement of every digit, plus one at the bottom.
      int64_t carry = negative ? 1 : 0;
      for (int64_t j = 0; j < f.limbs; ++j) {
        const int64_t digit = static_cast<uint32_t>(L[j]);
        int64_t v = negative ? (kDigitMask - digit) + carry : digit;
        if (negative) {
          carry = v >> 32;
          v &= kDigitMask;
        }
        mag[j] = v;
      }
      double acc = 0;
      for (int64_t j = f.limbs - 1; j >= 0; --j) {
        if (mag[j] != 0) acc += static_cast<double>(mag[j]) * scales[j];  // exact: a power of 2
      }
      if (negative) acc = -acc;
      if (poison[e]) {
        out[e] = std::numeric_limits<scalar_t>::quiet_NaN();
      } else if constexpr (std::is_same_v<scalar_t, float>) {
        constexpr float kInf = std::numeric_limits<float>::infinity();
        out[e] = acc > FLT_MAX ? kInf : acc < -FLT_MAX ? -kInf : static_cast<float>(acc);
      } else {
        out[e] = acc;
      }
    }
  });
}

// ---- LibTorch ops (any device) ----
// The limbs are widened to int64 for each call (a transient the size of 2·limbs), the digits
// scattered in, the carries propagated, and the result stored back as int32.

// Limbs as int64: digits in [0, 2^32), the top limb signed.
at::Tensor Widen(const at::Tensor& limbs) {
  at::Tensor wide = limbs.to(at::kLong);
  wide.narrow(1, 0, limbs.size(1) - 1).bitwise_and_(kDigitMask);
  return wide;
}

void NormalizeGeneric(at::Tensor& wide) {
  for (int64_t j = 0; j + 1 < wide.size(1); ++j) {
    at::Tensor limb = wide.select(1, j);
    const at::Tensor carry = limb.__rshift__(32);
    limb.sub_(carry * kDigit);
    wide.select(1, j + 1).add_(carry);
  }
}

void AddGeneric(const at::Tensor& x, bool negate, const Format& f, at::Tensor& limbs, at::Tensor& poison) {
  at::Tensor bits, E, neg;
  if (x.scalar_type() == at::kFloat) {
    bits = x.view(at::kInt).to(at::kLong).bitwise_and(kDigitMask);
    E = bits.__rshift__(23).bitwise_and(0xff);
    neg = bits.__rshift__(31).bitwise_and(1);
  } else {
    bits = x.view(at::kLong);
    E = bits.__rshift__(52).bitwise_and(0x7ff);
    neg = bits.lt(0).to(at::kLong);
  }
  const at::Tensor nonfinite = E.eq(f.exponent_mask);
  poison.logical_or_(nonfinite);
  at::Tensor mant = bits.bitwise_and((int64_t{1} << f.mantissa_bits) - 1)
                        .bitwise_or(E.gt(0).to(at::kLong).__lshift__(f.mantissa_bits));
  mant.masked_fill_(nonfinite, 0);
  const at::Tensor p = (E - 1).clamp_min(0);
  // ±1 per element: the value's sign, flipped when subtracting.
  const at::Tensor sign = 1 - 2 * (negate ? 1 - neg : neg);
  at::Tensor wide = Widen(limbs);
  auto place = [&](const at::Tensor& chunk, const at::Tensor& q) {  // chunk < 2^27
    const at::Tensor idx = q.__rshift__(5);
    const at::Tensor v = chunk.__lshift__(q.bitwise_and(31));
    wide.scatter_add_(1, idx.unsqueeze(1), (v.bitwise_and(kDigitMask) * sign).unsqueeze(1));
    wide.scatter_add_(1, (idx + 1).unsqueeze(1), (v.__rshift__(32) * sign).unsqueeze(1));
  };
  if (x.scalar_type() == at::kFloat) {
    place(mant, p);
  } else {
    place(mant.bitwise_and((1 << 26) - 1), p);
    place(mant.__rshift__(26), p + 26);
  }
  NormalizeGeneric(wide);
  limbs.copy_(wide);  // digits ≥ 2^31 wrap to the int32 with the same bits
}

at::Tensor ValueGeneric(const at::Tensor& limbs, const at::Tensor& poison, const Format& f,
                        at::ScalarType dtype) {
  // As ValueCpu: the magnitude, top limb first.
  const at::Tensor wide = Widen(limbs);
  const at::Tensor negative = wide.select(1, wide.size(1) - 1).lt(0);
  at::Tensor mag = at::where(negative.unsqueeze(1), -wide, wide);
  NormalizeGeneric(mag);
  at::Tensor acc = at::zeros({limbs.size(0)}, limbs.options().dtype(at::kDouble));
  for (int64_t j = limbs.size(1) - 1; j >= 0; --j) {
    const int exp = static_cast<int>(32 * j + f.low_exp);
    at::Tensor term = mag.select(1, j).to(at::kDouble);
    // Scale in two steps where 2^exp alone would overflow (fp64's top limbs), so that a zero
    // limb stays zero instead of becoming 0 · inf.
    if (exp > 900) term = term * std::ldexp(1.0, exp - 900) * std::ldexp(1.0, 900);
    else term = term * std::ldexp(1.0, exp);
    acc.add_(term);
  }
  acc = at::where(negative, -acc, acc);
  if (dtype == at::kFloat) {
    acc = at::where(acc.abs() > FLT_MAX, acc.sign() * std::numeric_limits<double>::infinity(), acc);
  }
  return acc.to(dtype).masked_fill_(poison, std::numeric_limits<double>::quiet_NaN());
}

bool UseCpuLoops(const at::Tensor& limbs) {
  return limbs.device().is_cpu() && !force_generic.load();
}

}  // namespace

ExactSum::ExactSum(const at::Tensor& like)
    : dtype_(like.scalar_type()), shape_(like.sizes().vec()) {
  const Format f = FormatOf(dtype_);
  limbs_ = at::zeros({like.numel(), f.limbs}, like.options().dtype(at::kInt));
  poison_ = at::zeros({like.numel()}, like.options().dtype(at::kBool));
}

int64_t ExactSum::LimbsFor(at::ScalarType dtype) { return FormatOf(dtype).limbs; }

void ExactSum::ForceGenericForTesting(bool force) { force_generic.store(force); }

void ExactSum::Accumulate(const at::Tensor& x_in, bool negate) {
  TORCH_CHECK(defined(), "ExactSum: not initialised");
  TORCH_CHECK(x_in.scalar_type() == dtype_ && x_in.sizes().vec() == shape_,
              "ExactSum: expected a ", dtype_, " tensor of shape ", at::IntArrayRef(shape_), ", got ",
              x_in.scalar_type(), " ", x_in.sizes());
  at::NoGradGuard no_grad;
  const at::Tensor x = x_in.detach().contiguous().view({-1});
  const Format f = FormatOf(dtype_);
  if (UseCpuLoops(limbs_)) {
    AT_DISPATCH_FLOATING_TYPES(dtype_, "exact_sum_add", [&] {
      AddCpu<scalar_t>(x.data_ptr<scalar_t>(), x.numel(), negate, f, limbs_.data_ptr<int32_t>(),
                       poison_.data_ptr<bool>());
    });
  } else {
    AddGeneric(x, negate, f, limbs_, poison_);
  }
}

at::Tensor ExactSum::Value() const {
  TORCH_CHECK(defined(), "ExactSum: not initialised");
  at::NoGradGuard no_grad;
  const Format f = FormatOf(dtype_);
  if (!UseCpuLoops(limbs_)) return ValueGeneric(limbs_, poison_, f, dtype_).view(shape_);
  at::Tensor out = at::empty(shape_, limbs_.options().dtype(dtype_));
  AT_DISPATCH_FLOATING_TYPES(dtype_, "exact_sum_value", [&] {
    ValueCpu<scalar_t>(limbs_.size(0), f, limbs_.data_ptr<int32_t>(), poison_.data_ptr<bool>(),
                       out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace slim
