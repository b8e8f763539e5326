// Exact causal softmax attention, the reference mode of imported models (FeatureMap::kSoftmax):
//   out_i = Σ_{j ≤ i} softmax_j(q_i · k_j / √d) v_j
// over the keys and values of earlier calls (a cache carried in AttentionState's place) and
// this call's. Quadratic in length and without a prefix-sum state: generation and evaluation
// run it in pieces, carrying the cache, but SLiM cannot train it in slices.
#pragma once

#include "engine/causal_attention.h"

namespace slim {

// The cache before the first token: keys (s) and values (z) of shape (B, H, 0, d).
AttentionState EmptySoftmaxCache(int64_t batch, int64_t heads, int64_t head_dim, const at::TensorOptions& options);

// q, k: (B, H, T, d), v: (B, H, T, d); cache: keys and values of the positions before this
// call, (B, H, T0, d). Computes in the cache's dtype with autocast disabled; out is (B, H, T, d),
// end the cache with this call's keys and values appended. Exception: with LibTorch >= 2.0, a
// whole sequence (empty cache) on CUDA goes through PyTorch's scaled-dot-product attention, in
// bf16 when q arrives in bf16 (autocast), which is the fast baseline slim-bench compares with.
AttentionOutput CausalSoftmaxAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const AttentionState& cache);

}  // namespace slim
