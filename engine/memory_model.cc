#include "engine/memory_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "base/errors.h"

namespace slim {
namespace {

constexpr int64_t kFloatBytes = 4;  // master weights, gradients, optimizer state, states
constexpr int64_t kIdBytes = 8;     // int64 token ids
// Live copies of one state set during the backward sweep: the forward sweep's final state, the
// zero start of slice 0, the end states being walked back, their gradients G, the start leaves
// and their gradients.
constexpr int64_t kLiveStateSets = 6;

int64_t LoraParameterCount(const StepShape& s) {
  const int64_t D = s.model.d_model, F = s.model.d_ff, KV = s.model.kv_dim(), r = s.lora_rank;
  // Adapters A (r×in) and B (out×r) on q, o (D→D), k, v (D→KV) and on the FFN (D→F, F→D, and
  // SwiGLU's second D→F).
  const int64_t ffn_inputs = s.model.ffn == FfnKind::kSwiGlu ? 2 : 1;
  // A learned feature map trains beside the adapters.
  return s.model.n_layers * (2 * r * (D + D) + 2 * r * (D + KV) + ffn_inputs * r * (D + F) + r * (F + D)) +
         s.model.FeatureParameterCount();
}

}  // namespace

void StepShape::Validate() const {
  model.Validate();
  CheckArgument(batch >= 1, "batch: " + std::to_string(batch) + " must be >= 1");
  CheckArgument(seq_len >= 1, "seq_len: " + std::to_string(seq_len) + " must be >= 1");
  CheckArgument(model.positions != PositionKind::kLearned || seq_len <= model.max_positions,
                "seq_len: " + std::to_string(seq_len) + " is longer than the model's " +
                    std::to_string(model.max_positions) +
                    " learned positions (max_positions); a model with learned positions cannot see further");
  if (tuning == TuningMode::kLora) {
    CheckArgument(lora_rank >= 1 && lora_rank <= model.d_model,
                  "lora_rank: " + std::to_string(lora_rank) + " is out of range [1, " +
                      std::to_string(model.d_model) + "]");
  }
}

int64_t TrainableParameterCount(const StepShape& shape) {
  return shape.tuning == TuningMode::kLora ? LoraParameterCount(shape) : shape.model.ParameterCount();
}

int64_t StateSetBytes(const StepShape& s) {
  const int64_t M = s.model.features_per_head(), d = s.model.head_dim();
  return s.model.n_layers * s.batch * s.model.n_heads * M * (d + 1) * kFloatBytes;
}

int64_t ExactSumBytes(const StepShape& s) {
  // fp32 states (bf16 runs keep fp32 states too); ExactSum::BytesPerElement(kFloat), written
  // out because this file must not include LibTorch (Planner.ExactSumsAreCountedInSubtractMode
  // checks they agree).
  constexpr int64_t kExactSumBytesPerElement = 9 * 4 + 1;
  return StateSetBytes(s) / kFloatBytes * kExactSumBytesPerElement;
}

MemoryBreakdown PredictPeak(const StepShape& s, int64_t chunk_size, StartStateMode mode,
                            const MemoryCoefficients& k) {
  const int64_t L = s.seq_len;
  const int64_t C = std::clamp<int64_t>(chunk_size, 1, L);
  const int64_t slices = (L + C - 1) / C;
  const int64_t trainable = TrainableParameterCount(s);
  const int64_t projection = s.model.n_layers * s.model.n_heads * s.model.features_per_head() *
                             s.model.head_dim();
  MemoryBreakdown m;
  m.weights = (s.model.ParameterCount() + projection +
               (s.tuning == TuningMode::kLora ? trainable : 0)) * kFloatBytes;
  m.gradients = trainable * kFloatBytes;
  // AdamW: exp_avg and exp_avg_sq; SGD: the momentum buffer.
  m.optimizer_state = trainable * kFloatBytes * (s.optimizer == OptimizerKind::kAdamW ? 2 : 1);
  m.carried_states = slices > 1 ? kLiveStateSets * StateSetBytes(s) : 0;
  m.boundaries = mode == StartStateMode::kBoundaries ? (slices - 1) * StateSetBytes(s) : 0;
  m.exact_sums = mode == StartStateMode::kSubtract && slices > 1 ? ExactSumBytes(s) : 0;
  m.token_ids = 2 * s.batch * L * kIdBytes;
  m.activations = static_cast<int64_t>(std::llround(k.activation_bytes_per_token * s.batch * C));
  if (s.model.feature_map == FeatureMap::kSoftmax) {
    const int64_t probabilities = s.batch * s.model.n_heads * C * C * kFloatBytes, mask = C * C;
    m.attention_scores = s.model.n_layers * (probabilities + mask) + 3 * probabilities;
  }
  m.workspace = static_cast<int64_t>(std::llround(k.workspace_bytes));
  m.total = m.weights + m.gradients + m.optimizer_state + m.carried_states + m.boundaries + m.exact_sums +
            m.token_ids + m.activations + m.attention_scores + m.workspace;
  return m;
}

StepShape CalibrationProbeShape(const StepShape& shape) {
  StepShape probe = shape;
  // Softmax attention's probes are shorter: its quadratic term is analytic, and at 32 blocks a
  // large model's probabilities alone would take gigabytes.
  probe.seq_len = (shape.model.feature_map == FeatureMap::kSoftmax ? kSoftmaxCalibrationProbeBlocks
                                                                   : kCalibrationProbeBlocks) *
                  shape.model.attention_block;
  probe.batch = CalibrationProbeBatch(shape.batch);
  if (probe.model.positions == PositionKind::kLearned) {
    probe.model.max_positions = std::max(probe.model.max_positions, probe.seq_len);
  }
  return probe;
}

int64_t CalibrationPeakBound(const StepShape& shape) {
  const StepShape probe = CalibrationProbeShape(shape);
  const ModelConfig& m = probe.model;
  // Per token of one sequence, in floats: a layer's norms, projections, rotated q and k,
  // feature maps with their pre-activations, the block-local scores, the attention output,
  // the feed-forward's d_ff-wide tensors (SwiGLU: gate, up, their activation and product) and
  // the residuals; then the logits, their log-softmax and its gradient.
  const int64_t ffn_floats = (m.ffn == FfnKind::kSwiGlu ? 5 : 3) * m.d_ff;
  const int64_t layer_floats = 16 * m.d_model + ffn_floats + 4 * m.n_heads * m.features_per_head() +
                               2 * m.n_heads * m.attention_block;
  const int64_t token_floats = m.n_layers * layer_floats + 3 * m.vocab_size;
  const MemoryCoefficients none;
  const MemoryBreakdown analytic = PredictPeak(probe, probe.seq_len, StartStateMode::kSubtract, none);
  const int64_t activations = 2 * token_floats * kFloatBytes * probe.batch * probe.seq_len;
  // MeasureCalibration's own token ids: B · (2·L_probe + 1) int64s.
  const int64_t probe_ids = probe.batch * (2 * probe.seq_len + 1) * kIdBytes;
  return analytic.total + probe_ids + activations + (int64_t{4} << 20);
}

double PredictStepSeconds(const StepShape& s, int64_t chunk_size, const MemoryCoefficients& k) {
  const int64_t L = s.seq_len;
  const int64_t C = std::clamp<int64_t>(chunk_size, 1, L);
  const int64_t slices = (L + C - 1) / C;
  const double forward_tokens = static_cast<double>((slices - 1) * C);  // slices 0..N−2
  const double seconds = k.seconds_per_token_backward * s.batch * L +
                         k.seconds_per_token_forward * s.batch * forward_tokens +
                         k.seconds_per_slice * slices + k.seconds_fixed;
  return std::max(seconds, 0.0);
}

PlanResult PlanChunkSize(const StepShape& shape, int64_t quota_bytes, const MemoryCoefficients& k,
                         double margin) {
  shape.Validate();
  CheckArgument(margin >= 0 && margin < 1, "margin: must be in [0, 1)");
  const int64_t L = shape.seq_len, block = shape.model.attention_block;
  const double budget = static_cast<double>(quota_bytes) * (1.0 - margin);
  auto plan_for = [&](int64_t C, StartStateMode mode) {
    Plan p;
    p.chunk_size = C;
    p.mode = mode;
    p.predicted_peak_bytes = PredictPeak(shape, C, mode, k).total;
    p.est_step_seconds = PredictStepSeconds(shape, C, k);
    return p;
  };
  PlanResult result;
  // Candidates in decreasing order: L itself, then multiples of the attention block below L.
  // Both modes are exact; stored boundaries are preferred where they fit (no exact sums to
  // keep, no time spent on them), subtraction otherwise. The first candidate that fits in
  // either mode is the largest; the minimum quota is the smallest peak of any candidate.
  // Softmax attention cannot be sliced: L is the only candidate.
  const int64_t largest_multiple = shape.model.feature_map == FeatureMap::kSoftmax ? 0 : ((L - 1) / block) * block;
  double min_peak = std::numeric_limits<double>::infinity();
  for (int64_t C = L; C >= 1; C = (C == L ? largest_multiple : C - block)) {
    if (C <= 0) break;
    const Plan stored = plan_for(C, StartStateMode::kBoundaries);
    const Plan sub = plan_for(C, StartStateMode::kSubtract);
    min_peak = std::min({min_peak, static_cast<double>(stored.predicted_peak_bytes),
                         static_cast<double>(sub.predicted_peak_bytes)});
    if (!result.feasible && (stored.predicted_peak_bytes <= budget || sub.predicted_peak_bytes <= budget)) {
      result.feasible = true;
      result.plan = stored.predicted_peak_bytes <= budget ? stored : sub;
    }
  }
  result.min_quota_bytes = static_cast<int64_t>(std::ceil(min_peak / (1.0 - margin)));
  return result;
}

}  // namespace slim
