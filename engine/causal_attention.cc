#include "engine/causal_attention.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>

namespace slim {

at::ScalarType StateDtype(at::ScalarType activation_dtype) {
  return activation_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

AttentionState ZeroAttentionState(int64_t batch, int64_t heads, int64_t features,
                                  int64_t head_dim, const at::TensorOptions& options) {
  return {at::zeros({batch, heads, features, head_dim}, options),
          at::zeros({batch, heads, features}, options)};
}

AttentionOutput CausalLinearAttention(const at::Tensor& phi_q, const at::Tensor& phi_k,
                                      const at::Tensor& v, const AttentionState& start,
                                      int64_t block) {
  // States and their sums stay in fp32 even inside a bf16 autocast region.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = start.s.scalar_type();
  at::Tensor q = phi_q.to(dtype), k = phi_k.to(dtype), vv = v.to(dtype);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), M = q.size(3), D = vv.size(3);
  const int64_t b = std::max<int64_t>(1, std::min(block, T));
  const int64_t nb = (T + b - 1) / b;
  const int64_t padded = nb * b;
  if (padded != T) {
    // Zero keys add nothing to the state; padded outputs are dropped below.
    q = at::constant_pad_nd(q, {0, 0, 0, padded - T});
    k = at::constant_pad_nd(k, {0, 0, 0, padded - T});
    vv = at::constant_pad_nd(vv, {0, 0, 0, padded - T});
  }
  q = q.view({B, H, nb, b, M});
  k = k.view({B, H, nb, b, M});
  vv = vv.view({B, H, nb, b, D});

  const at::Tensor kv = at::matmul(k.transpose(-1, -2), vv);  // (B,H,nb,M,D)
  const at::Tensor ksum = k.sum(-2);                          // (B,H,nb,M)
  const at::Tensor s0 = start.s.unsqueeze(2), z0 = start.z.unsqueeze(2);
  at::Tensor s_before = s0, z_before = z0;  // state at the start of each block
  if (nb > 1) {
    s_before = at::cat({s0, s0 + kv.narrow(2, 0, nb - 1).cumsum(2)}, 2);
    z_before = at::cat({z0, z0 + ksum.narrow(2, 0, nb - 1).cumsum(2)}, 2);
  }
  AttentionState end{s_before.select(2, nb - 1) + kv.select(2, nb - 1),
                     z_before.select(2, nb - 1) + ksum.select(2, nb - 1)};

  const at::Tensor causal =
      at::ones({b, b}, at::TensorOptions().dtype(at::kBool).device(q.device())).tril();
  const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).masked_fill(causal.logical_not(), 0);
  const at::Tensor num = at::matmul(scores, vv) + at::matmul(q, s_before);
  const at::Tensor den = scores.sum(-1) + at::matmul(q, z_before.unsqueeze(-1)).squeeze(-1);
  // Double where: the masked branch divides by 1, so no inf/NaN reaches the gradient.
  const at::Tensor ok = (den > kDenominatorFloor).unsqueeze(-1);
  at::Tensor out = at::where(ok, num / at::where(ok, den.unsqueeze(-1), at::ones_like(den).unsqueeze(-1)),
                             at::zeros_like(num));
  out = out.view({B, H, padded, D});
  if (padded != T) out = out.narrow(2, 0, T);
  return {out, end};
}

AttentionState AttentionStateDelta(const at::Tensor& phi_k, const at::Tensor& v,
                                   at::ScalarType state_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor k = phi_k.to(state_dtype);
  return {at::matmul(k.transpose(-1, -2), v.to(state_dtype)), k.sum(2)};
}

}  // namespace slim
