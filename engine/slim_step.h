// The SLiM training step (docs/engine.md): exact gradients of the mean next-token loss with
// activation memory proportional to the chunk size C instead of the sequence length L.
//
// Forward sweep (no autograd): slices 1..N−1 in order, all layers per slice, carrying only the
// per-layer attention state (the last slice's state is never needed). Backward sweep: slices
// N..1 in reverse; each is re-run with autograd from its start state (a leaf), and
// slice_loss_n + Σ_layers ⟨G, state_end⟩ is backpropagated, so parameter gradients accumulate
// and G ← ∂/∂state_start. Start states come from subtracting the slice's own contribution from
// its end state (O(1) memory in L) or from the boundaries stored by the forward sweep. The
// subtraction is exact: states are carried as exact integer sums (engine/exact_sum.h), so a
// rebuilt start state equals the forward sweep's bit for bit, on any weights.
// C ≥ L is one slice: ordinary backprop, no forward sweep.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/model.h"
#include "base/training_options.h"

namespace slim {

inline constexpr int64_t kIgnoreIndex = -100;

inline constexpr int64_t kDefaultLogitsBlockBytes = int64_t{32} << 20;

struct SlimStepOptions {
  int64_t chunk_size = 0;  // C ≥ 1; C ≥ L means ordinary backprop
  StartStateMode mode = StartStateMode::kSubtract;
  Precision precision = Precision::kFp32;
  int64_t ignore_index = kIgnoreIndex;  // targets equal to this are excluded from the loss
  // What the summed cross-entropy is divided by; 0: this batch's count of counted targets.
  // Data-parallel ranks pass the count of the whole global batch, so that the sum over ranks
  // of their losses and gradients is the global batch's mean loss and its gradient.
  int64_t loss_normalizer = 0;
  // A slice whose fp32 logits would take more than this computes its loss in row blocks of at
  // most this much (BlockedCrossEntropySum, engine/head_loss.h): large vocabularies stay
  // bounded. 0: never in blocks.
  int64_t logits_block_bytes = kDefaultLogitsBlockBytes;
  // Debugging aids (cost memory O(L/C · state)); used by tests and the drift audit.
  bool audit_start_states = false;  // subtract mode: compare rebuilt starts with stored ones
  bool record_state_gradients = false;  // keep G for every slice boundary
};

struct SlimStepResult {
  double loss = 0.0;        // Σ CE over non-ignored targets / the normaliser
  int64_t target_count = 0; // the normaliser: loss_normalizer, or the count of counted targets
  int64_t slices = 0;
  // audit_start_states: max over slices and layers of max|rebuilt − stored| / max|stored|
  // (separately for s and z, the larger is reported), and how many layer states were compared.
  // Relative to the stored state itself, not to the final one: a state small next to the
  // final one is exactly where subtraction in floating point fails.
  double max_start_state_drift = 0.0;
  int64_t audited_states = 0;
  // record_state_gradients: state_gradients[n][r] = ∂loss/∂(state at the end of slice n) for
  // layer r, n = 0 .. slices−2.
  std::vector<ModelState> state_gradients;
};

// tokens, targets: (B, L) int64 on the model's device. Accumulates ∂loss/∂θ into the
// parameters' .grad (callers zero them first) and returns the loss. Throws
// EngineError(kInvalidArgument) for malformed input (shapes, ids ≥ vocab, no targets), checked
// before any computation, and EngineError(kResourceExhausted) when an allocation is refused
// (a memory cap): then the gradients hold a partial sum and must be zeroed before reuse.
SlimStepResult SlimTrainingStep(PerformerLMImpl& model, const at::Tensor& tokens,
                                const at::Tensor& targets, const SlimStepOptions& options);

// Loss without gradients (evaluation), computed slice by slice with C tokens at a time, each
// slice's loss in row blocks past `logits_block_bytes` as in training (so that an evaluation
// fits the quota its training was planned for).
double SlicedLoss(PerformerLMImpl& model, const at::Tensor& tokens, const at::Tensor& targets,
                  int64_t chunk_size, Precision precision, int64_t ignore_index = kIgnoreIndex,
                  int64_t logits_block_bytes = kDefaultLogitsBlockBytes);

}  // namespace slim
