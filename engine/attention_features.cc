#include "engine/attention_features.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <tuple>

namespace slim {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// cos/sin of the angles of positions offset..offset+T−1, computed in fp64 per position. Every
// layer's queries and keys of a slice use the same tables (and both SLiM sweeps revisit each
// slice), so a caller-owned cache keeps the last request: recomputed once per slice instead
// of 2·n_layers times. The cache belongs to the model, so its memory is the model's.
const RotaryCache& RotaryAngles(int64_t offset, int64_t T, int64_t d, double base,
                                at::ScalarType dtype, const c10::Device& device, RotaryCache* cache) {
  if (cache->offset == offset && cache->T == T && cache->d == d && cache->base == base &&
      cache->cos.defined() && cache->cos.scalar_type() == dtype && cache->cos.device() == device) {
    return *cache;
  }
  at::NoGradGuard no_grad;
  const int64_t half = d / 2;
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  const at::Tensor inv_freq = at::pow(base, at::arange(half, f64) * (-2.0 / d));
  const at::Tensor angles = at::outer(at::arange(offset, offset + T, f64), inv_freq);  // (T, half)
  *cache = {offset, T, d, base, angles.cos().to(dtype), angles.sin().to(dtype)};
  return *cache;
}

// One (position, head) row: o = [x1·cos − x2·sin, x1·sin + x2·cos] (sign = +1) or the
// inverse rotation (sign = −1). Cloned for AVX2 and the baseline ISA (chosen when the library
// loads); neither clone uses FMA, so both round identically. Clang (the fuzz build,
// scripts/fuzz.sh) does not support target_clones on templates and gets the baseline only.
#if defined(__clang__)
#define SLIM_AVX2_CLONES
#else
#define SLIM_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif
template <typename scalar_t>
SLIM_AVX2_CLONES void RotateRow(
    const scalar_t* x, scalar_t* o, const scalar_t* c, const scalar_t* s, int64_t half,
    scalar_t sign) {
  for (int64_t i = 0; i < half; ++i) {
    const scalar_t x1 = x[i], x2 = x[half + i], si = sign * s[i];
    o[i] = x1 * c[i] - x2 * si;
    o[half + i] = x1 * si + x2 * c[i];
  }
}

// Rotation of the two halves of the head dimension by the position's angles:
//   [x1, x2] ↦ [x1·cos − x2·sin, x1·sin + x2·cos];  the backward rotates by −angle.
// One node and, on CPU, one pass over x (autograd of the op-by-op form made six temporaries
// and a cat, and as many again in the backward).
class RotaryFunction : public torch::autograd::Function<RotaryFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return Rotate(x, cos, sin, /*inverse=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    return {Rotate(grads[0], saved[0], saved[1], /*inverse=*/true), at::Tensor(), at::Tensor()};
  }

 private:
  // x: (B, H, T, d) with any strides; cos, sin: (T, d/2). Returns a contiguous tensor.
  static at::Tensor Rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                           bool inverse) {
    const int64_t half = x.size(-1) / 2;
    at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    const bool loop = x.device().is_cpu() && x.dim() == 4 && x.stride(3) == 1 &&
                      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
                      cos.scalar_type() == x.scalar_type() && cos.is_contiguous() &&
                      sin.is_contiguous();
    if (loop) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rotary", [&] {
        const scalar_t *px = x.data_ptr<scalar_t>(), *pc = cos.data_ptr<scalar_t>(),
                       *ps = sin.data_ptr<scalar_t>();
        scalar_t* po = out.data_ptr<scalar_t>();
        const scalar_t sign = inverse ? -1 : 1;
        const int64_t B = x.size(0), H = x.size(1), T = x.size(2), d = x.size(3);
        for (int64_t b = 0; b < B; ++b) {
          for (int64_t h = 0; h < H; ++h) {
            for (int64_t t = 0; t < T; ++t) {
              RotateRow<scalar_t>(px + b * x.stride(0) + h * x.stride(1) + t * x.stride(2),
                                  po + ((b * H + h) * T + t) * d, pc + t * half, ps + t * half,
                                  half, sign);
            }
          }
        }
      });
      return out;
    }
    const at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
    at::Tensor o1 = out.narrow(-1, 0, half), o2 = out.narrow(-1, half, half);
    at::mul_out(o1, x1, cos);
    o1.addcmul_(x2, sin, inverse ? 1 : -1);
    at::mul_out(o2, x2, cos);
    o2.addcmul_(x1, sin, inverse ? -1 : 1);
    return out;
  }
};

}  // namespace

at::Tensor ApplyRotary(const at::Tensor& x, int64_t offset, double base, RotaryCache* cache) {
  RotaryCache local;
  const RotaryCache& t = RotaryAngles(offset, x.size(2), x.size(3), base, x.scalar_type(),
                                      x.device(), cache != nullptr ? cache : &local);
  return RotaryFunction::apply(x, t.cos, t.sin);
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
    case FeatureMap::kFavorPlus:
    case FeatureMap::kLearned:
    case FeatureMap::kSoftmax: break;
  }
  TORCH_CHECK(false, "DeterministicFeatures called with ", FeatureMapName(map));
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

namespace {

// favor+ features φ = exp(u − c), u = x·(d^{-1/4} ω)ᵀ, as one node with a hand-written
// backward (autograd of the op-by-op form kept the scaled input, u, u − c and φ alive and ran
// as many elementwise passes again backwards):
//   queries: c = max_m u (a per-row constant that cancels in num/den; no gradient flows
//            through it, as before with .detach());
//   keys:    c = ‖d^{-1/4} x‖²/2 + c_h, so ∂c/∂x = d^{-1/2} x.
// Backward: du = dφ ⊙ φ,  dx = du·w̃  (keys: − d^{-1/2} x Σ_m du).
class FavorFeatureFunction : public torch::autograd::Function<FavorFeatureFunction> {
 public:
  // x: (B,H,T,d); w: (H,M,d) already scaled by d^{-1/4}; key_bound: c_h as (1,H,1,1), or
  // undefined for queries.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const c10::optional<at::Tensor>& key_bound) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const bool is_key = key_bound.has_value() && key_bound->defined();
    const double half_sq_scale = 0.5 / std::sqrt(static_cast<double>(x.size(-1)));
    at::Tensor u = at::matmul(x, w.transpose(-1, -2));  // (B,H,T,M)
    if (is_key) {
      at::Tensor c = at::sum(x * x, {-1}, /*keepdim=*/true);
      c.mul_(half_sq_scale).add_(*key_bound);
      u.sub_(c);
    } else {
      u.sub_(at::amax(u, {-1}, /*keepdim=*/true));
    }
    u.exp_();
    ctx->saved_data["is_key"] = is_key;
    ctx->save_for_backward({is_key ? x : at::Tensor(), w, u});  // queries need no x
    return u;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &phi = saved[2];
    const at::Tensor du = grads[0] * phi;
    at::Tensor dx = at::matmul(du, w);
    if (ctx->saved_data["is_key"].toBool()) {
      const double sq_scale = 1.0 / std::sqrt(static_cast<double>(x.size(-1)));
      dx.addcmul_(x, du.sum(-1, /*keepdim=*/true), -sq_scale);
    }
    return {dx, at::Tensor(), at::Tensor()};
  }
};

at::Tensor ScaledProjection(const at::Tensor& projection, const at::Tensor& x,
                            at::ScalarType dtype) {
  // exp(qᵀk/√d) = SM(q·d^{-1/4}, k·d^{-1/4}); the scale is folded into the (small) projection.
  return projection.to(dtype) * std::pow(static_cast<double>(x.size(-1)), -0.25);
}

}  // namespace

namespace {
// φ(x) = softmax([u, −u]) over the features, u = x̃ Wᵀ: positive, summing to 1 per position
// (no overflow whatever W learns). Differentiable in x and W through autograd.
at::Tensor LearnedFeatures(const at::Tensor& x, const at::Tensor& weight, at::ScalarType dtype) {
  const at::Tensor u = at::matmul(ScaledInput(x, dtype), weight.to(dtype).transpose(-1, -2));  // (B,H,T,M/2)
  return at::softmax(at::cat({u, -u}, -1), -1);
}
}  // namespace

at::Tensor QueryFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                         at::ScalarType dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (map == FeatureMap::kSoftmax) return x.to(dtype);  // softmax attention takes q and k as they are
  if (map == FeatureMap::kLearned) return LearnedFeatures(x, projection, dtype);
  if (map != FeatureMap::kFavorPlus) return DeterministicFeatures(map, ScaledInput(x, dtype));
  at::Tensor w;
  {
    at::NoGradGuard no_grad;  // the projection is a buffer, never trained
    w = ScaledProjection(projection, x, dtype);
  }
  return FavorFeatureFunction::apply(x.to(dtype), w, c10::nullopt);
}

at::Tensor KeyFeatures(FeatureMap map, const at::Tensor& x, const at::Tensor& projection,
                       at::ScalarType dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (map == FeatureMap::kSoftmax) return x.to(dtype);  // softmax attention takes q and k as they are
  if (map == FeatureMap::kLearned) return LearnedFeatures(x, projection, dtype);
  if (map != FeatureMap::kFavorPlus) return DeterministicFeatures(map, ScaledInput(x, dtype));
  at::Tensor w, bound;
  {
    at::NoGradGuard no_grad;
    w = ScaledProjection(projection, x, dtype);
    // c_h = max(0, max_m ‖ω_m‖²/2 − kKeyLogFeatureCap) with the unscaled ω: key features
    // ≤ e^cap for every input, since ωᵀx̃ − ‖x̃‖²/2 ≤ ‖ω‖²/2 for x̃ = d^{-1/4} x.
    const at::Tensor p = projection.to(dtype);
    bound = ((p * p).sum(-1).amax(-1).mul(0.5) - kKeyLogFeatureCap).clamp_min(0.0);
    bound = bound.view({1, -1, 1, 1});
  }
  return FavorFeatureFunction::apply(x.to(dtype), w, bound);
}

}  // namespace slim
