#include "engine/attention_features.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>
#include <tuple>

namespace slim {

at::Tensor ApplyRotary(const at::Tensor& x, int64_t offset, double base) {
  const int64_t T = x.size(2), d = x.size(3), half = d / 2;
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(x.device());
  const at::Tensor inv_freq = at::pow(base, at::arange(half, f64) * (-2.0 / d));
  const at::Tensor angles = at::outer(at::arange(offset, offset + T, f64), inv_freq);  // (T, half)
  const at::Tensor cos = angles.cos().to(x.scalar_type());
  const at::Tensor sin = angles.sin().to(x.scalar_type());
  const at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return at::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
}

namespace {

// SplitMix64: decorrelates seeds that differ in one bit (seed, seed+1, ...).
uint64_t MixSeed(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

at::Tensor OrthogonalRows(int64_t rows, int64_t d, at::Generator& gen) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  std::vector<at::Tensor> blocks;
  for (int64_t have = 0; have < rows; have += d) {
    at::Tensor q, r;
    std::tie(q, r) = at::linalg_qr(at::randn({d, d}, gen, f64));
    // Fixing column signs by diag(R) makes Q Haar-distributed.
    q = q * at::sign(r.diagonal()).unsqueeze(0);
    blocks.push_back(q.t());
  }
  at::Tensor w = at::cat(blocks, 0).narrow(0, 0, rows);
  const at::Tensor norms = at::randn({rows, d}, gen, f64).norm(2, {1}, /*keepdim=*/true);
  return w * norms;
}

at::Tensor ScaledInput(const at::Tensor& x, at::ScalarType dtype) {
  // exp(qᵀk/√d) = SM(q·d^{-1/4}, k·d^{-1/4}).
  return x.to(dtype) * std::pow(static_cast<double>(x.size(-1)), -0.25);
}

at::Tensor DeterministicFeatures(FeatureMap map, const at::Tensor& xs) {
  switch (map) {
    case FeatureMap::kRelu: return at::relu(xs) + 1e-3;
    case FeatureMap::kEluPlusOne: return at::elu(xs) + 1.0;
    case FeatureMap::kSquare: return xs * xs;
    case FeatureMap::kFavorPlus: break;
  }
  TORCH_CHECK(false, "DeterministicFeatures called with favor+");
}

}  // namespace

at::Tensor DrawOrthogonalProjection(int64_t n_layers, int64_t heads, int64_t features,
                                    int64_t head_dim, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(MixSeed(seed));
  std::vector<at::Tensor> all;
  for (int64_t i = 0; i < n_layers * heads; ++i) {
    all.push_back(OrthogonalRows(features, head_dim, gen));
  }
  return at::stack(all).view({n_layers, heads, features, head_dim});
}

at::Tensor QueryFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                         at::ScalarType dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor xs = ScaledInput(x, dtype);
  if (map != FeatureMap::kFavorPlus) return DeterministicFeatures(map, xs);
  const at::Tensor u = at::matmul(xs, projection.to(dtype).transpose(-1, -2));  // (B,H,T,M)
  // −‖x‖²/2 and the row max are per-row constants: they cancel in out = num/den.
  return at::exp(u - std::get<0>(u.max(-1, /*keepdim=*/true)).detach());
}

at::Tensor KeyFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                       at::ScalarType dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor xs = ScaledInput(x, dtype);
  if (map != FeatureMap::kFavorPlus) return DeterministicFeatures(map, xs);
  const at::Tensor w = projection.to(dtype);
  const at::Tensor u = at::matmul(xs, w.transpose(-1, -2));
  // c_h = max(0, max_m ‖ω_m‖²/2 − kKeyLogFeatureCap): key features ≤ e^cap for every input.
  const at::Tensor bound =
      ((w * w).sum(-1).amax(-1).mul(0.5) - kKeyLogFeatureCap).clamp_min(0.0).view({1, -1, 1, 1});
  return at::exp(u - (xs * xs).sum(-1, /*keepdim=*/true).mul(0.5) - bound);
}

}  // namespace slim
