// The language-model loss over a slice in row blocks, so that the logits of a large vocabulary
// never exist for the whole slice: at vocabulary V a slice of N positions has N × V logits
// (with V = 50,257 and N = 512, 103 MB per copy, and the loss keeps several copies), which would
// dominate the memory that SLiM keeps independent of the sequence length.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace slim {

// Σ over rows i with targets[i] ≠ ignore_index of cross-entropy(h_i · Wᵀ, targets[i]), in fp32
// (fp64 when h is fp64): h (N, D), weight (V, D), targets (N) int64. The logits are computed
// `rows_per_block` rows at a time, in the forward and again in the backward (nothing
// vocabulary-sized is kept between them), and in the dtype at::linear gives them under the
// current autocast state, as the unblocked loss would. Differentiable in h and weight.
at::Tensor BlockedCrossEntropySum(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& targets,
                                  int64_t ignore_index, int64_t rows_per_block);

// Rows per block such that one block's fp32 logits take at most `budget_bytes` (at least 1).
int64_t RowsPerLogitsBlock(int64_t vocab_size, int64_t budget_bytes);

}  // namespace slim
