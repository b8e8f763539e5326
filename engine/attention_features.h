// Turning rotary-embedded queries and keys into the features φ(q), φ(k) of causal linear
// attention, and drawing the favor+ projections.
//
// Stabilisers are causal by construction (no statistic over the sequence):
//  - favor+ queries subtract their own row maximum (a per-position constant that cancels
//    exactly between numerator and denominator);
//  - favor+ keys subtract c_h = max(0, max_m ‖ω_hm‖²/2 − kKeyLogFeatureCap), a constant that
//    depends on the projection only. Since ωᵀk − ‖k‖²/2 ≤ ‖ω‖²/2 for every k, key features
//    never exceed e^kKeyLogFeatureCap (so sums over 2^40 tokens stay finite in fp32), and every
//    slice and both sweeps of a SLiM step use the same constant. For head dims up to ~64,
//    c_h is 0: no dynamic range is given away in the common case.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "base/model_config.h"

namespace slim {

inline constexpr double kKeyLogFeatureCap = 50.0;

// Rotary position embedding of x (B, H, T, d) at global positions offset .. offset+T−1.
// Angles are computed in fp64 per position, so a position's rotation does not depend on how
// the sequence is sliced. `cache`, if given, keeps the cos/sin tables of the last (offset, T)
// (every layer's q and k of a slice share them). Returns a contiguous tensor.
struct RotaryCache {
  int64_t offset = -1, T = -1, d = -1;
  double base = 0;
  at::Tensor cos, sin;  // (T, d/2)
};
at::Tensor ApplyRotary(const at::Tensor& x, int64_t offset, double base,
                       RotaryCache* cache = nullptr);

// favor+ projections for all layers: (n_layers, heads, features, head_dim), fp64 on CPU.
// Per head: stacked d×d Haar-orthogonal blocks, rows rescaled to χ(d)-distributed norms.
// Deterministic in `seed`.
at::Tensor DrawOrthogonalProjection(int64_t n_layers, int64_t heads, int64_t features,
                                    int64_t head_dim, uint64_t seed);

// x: (B, H, T, d) after rotary; projection: (H, M, d) for favor+, the trainable (H, M/2, d)
// weight for the learned map (gradients flow into it), ignored otherwise.
// Returns (B, H, T, M) in `dtype` (the state dtype), computed with autocast disabled. favor+
// features are one autograd node each (hand-written backward; see attention_features.cc).
// Learned features are the same function for queries and keys.
// Softmax (not a feature map) returns x itself in `dtype`, for CausalSoftmaxAttention.
at::Tensor QueryFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                         at::ScalarType dtype);
at::Tensor KeyFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                       at::ScalarType dtype);

}  // namespace slim
