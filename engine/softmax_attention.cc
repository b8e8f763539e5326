#include "engine/softmax_attention.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

namespace slim {

AttentionState EmptySoftmaxCache(int64_t batch, int64_t heads, int64_t head_dim, const at::TensorOptions& options) {
  return {at::zeros({batch, heads, 0, head_dim}, options), at::zeros({batch, heads, 0, head_dim}, options)};
}

AttentionOutput CausalSoftmaxAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const AttentionState& cache) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = cache.s.scalar_type();
#if TORCH_VERSION_MAJOR >= 2
  if (cache.s.size(2) == 0 && q.is_cuda()) {
    // A whole sequence on CUDA: PyTorch's fused attention (flash or memory-efficient kernels,
    // O(T) memory instead of the T×T scores). Flash needs bf16/fp16: under bf16 autocast the
    // projections arrive in bf16 and attention runs in it; fp32 inputs stay fp32.
    const at::ScalarType compute = at::isReducedFloatingType(q.scalar_type()) ? q.scalar_type() : dtype;
    const at::Tensor out = at::scaled_dot_product_attention(q.to(compute), k.to(compute), v.to(compute), {},
                                                            /*dropout_p=*/0.0, /*is_causal=*/true);
    return {out.to(dtype), {k.to(dtype), v.to(dtype)}};
  }
#endif
  const at::Tensor keys = at::cat({cache.s, k.to(dtype)}, 2), values = at::cat({cache.z, v.to(dtype)}, 2);
  const int64_t T = q.size(2), before = cache.s.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor scores = at::matmul(q.to(dtype), keys.transpose(2, 3)) * scale;  // (B, H, T, before + T)
  // Query i (position before + i) sees keys 0 .. before + i.
  const at::Tensor future =
      at::ones({T, before + T}, at::TensorOptions().dtype(at::kBool).device(q.device())).triu(before + 1);
  scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  return {at::matmul(at::softmax(scores, -1), values), {keys, values}};
}

}  // namespace slim
