// Causal linear attention in block form, with a carried prefix state (docs/engine.md).
//
// For every position i:  out_i = S_iᵀ φq_i / z_iᵀ φq_i,
//   S_i = S_start + Σ_{j≤i} φk_j v_jᵀ  (M×d),   z_i = z_start + Σ_{j≤i} φk_j  (M).
// The sequence is cut into blocks of `block` tokens: inside a block a masked φq φkᵀ matmul,
// across blocks the prefix state. The attention is one autograd node with a hand-written
// backward (causal_attention.cc), so autograd yields gradients w.r.t. φq, φk, v, the start
// state and (through `end`) the end state.
#pragma once

#include <ATen/core/Tensor.h>

namespace slim {

// Denominators at or below this floor (every feature underflowed: a degenerate input) give an
// output of 0 with zero gradient instead of 0/0. Above it the output is exactly num/den, so
// per-row and per-head feature constants cancel exactly.
inline constexpr double kDenominatorFloor = 1e-30;

// Prefix state of one layer for a batch: s = Σ φk vᵀ of shape (B, H, M, d), z = Σ φk of shape
// (B, H, M). Kept in fp32 (fp64 for fp64 models) even when activations are bf16.
struct AttentionState {
  at::Tensor s;
  at::Tensor z;
};

struct AttentionOutput {
  at::Tensor out;    // (B, H, T, d) in the state dtype (a view of a (B, T, H, d) tensor)
  AttentionState end;  // state after the last of the T positions
};

// On the CPU, fp32/fp64 block loops call the BLAS directly (one small GEMM per block); CUDA and
// other dtypes take an ATen path with a fixed number of batched kernels. Forcing that path on
// the CPU lets tests check the code CUDA runs (process-wide; for tests and slim-bench --profile).
void ForceTorchAttentionPath(bool force);

// fp64 activations keep fp64 states; everything else keeps fp32 states.
at::ScalarType StateDtype(at::ScalarType activation_dtype);

// Exact zeros, the state before the first token.
AttentionState ZeroAttentionState(int64_t batch, int64_t heads, int64_t features,
                                  int64_t head_dim, const at::TensorOptions& options);

// phi_q, phi_k: (B, H, T, M); v: (B, H, T, d); start: state before position 0 of this call.
// Computes in the start state's dtype with autocast disabled. Any T ≥ 1 and block ≥ 1.
// `out` is a (B, H, T, d) view of a heads-last (B, T, H, d) tensor, so merging heads is free.
// block_deltas, if given, must be AttentionBlockDeltas(phi_k, v, dtype, block) (a caller that
// already needed them, e.g. to rebuild `start`, saves recomputing them); gradients w.r.t.
// phi_k and v are exact either way.
AttentionOutput CausalLinearAttention(const at::Tensor& phi_q, const at::Tensor& phi_k,
                                      const at::Tensor& v, const AttentionState& start,
                                      int64_t block, const at::Tensor& block_deltas = {});

// Per-block state contributions Σ_{t in block} φk_t [v_t | 1]ᵀ of shape (B·H, nb, M, d+1)
// (nb = ⌈T/block⌉), in state_dtype, without gradient.
at::Tensor AttentionBlockDeltas(const at::Tensor& phi_k, const at::Tensor& v,
                                at::ScalarType state_dtype, int64_t block);
// Σ over the blocks of AttentionBlockDeltas: the same quantity as AttentionStateDelta.
AttentionState SumBlockDeltas(const at::Tensor& block_deltas, int64_t batch, int64_t heads);

// Σ over the T positions of (φk vᵀ, φk), in `state_dtype`: what one call adds to the state.
AttentionState AttentionStateDelta(const at::Tensor& phi_k, const at::Tensor& v,
                                   at::ScalarType state_dtype);

}  // namespace slim
