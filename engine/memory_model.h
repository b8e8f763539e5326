// Predicted peak memory and time of one training step as a function of the job's shape and its
// chunk size (docs/memory-planner.md), and the planner that picks the chunk size fitting a quota.
//
//   peak(C) = weights + gradients + optimizer state + carried states (+ stored boundaries)
//             + token ids + a · B · C + b
//
// Everything but a (activation bytes per token of one slice, all layers) and b (workspace) is
// counted analytically from the configuration; a and b come from probe steps measured on the
// device kind (see calibration.h). Plain C++: the server includes this header.
#pragma once

#include <cstdint>
#include <string>

#include "base/model_config.h"
#include "base/training_options.h"

namespace slim {

// What determines a step's memory, apart from the chunk size and start-state mode.
struct StepShape {
  ModelConfig model;
  int64_t batch = 1;
  int64_t seq_len = 1;
  Precision precision = Precision::kFp32;
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  TuningMode tuning = TuningMode::kFull;
  int64_t lora_rank = 8;  // used when tuning == kLora

  // Throws EngineError(kInvalidArgument) naming the first field out of range.
  void Validate() const;
};

// Calibrated for one (model config, device kind, precision, tuning, optimizer).
struct MemoryCoefficients {
  double activation_bytes_per_token = 0;  // a: per sequence position of one slice, all layers
  double workspace_bytes = 0;             // b
  // Step time ≈ t_backward·B·L + t_forward·B·(tokens of the forward sweep) + t_slice·N + t_fixed
  double seconds_per_token_backward = 0;
  double seconds_per_token_forward = 0;
  double seconds_per_slice = 0;
  double seconds_fixed = 0;
};

// The analytic parts, in bytes, and the total.
struct MemoryBreakdown {
  int64_t weights = 0;
  int64_t gradients = 0;
  int64_t optimizer_state = 0;
  int64_t carried_states = 0;  // states, their gradients and temporaries, all layers
  int64_t boundaries = 0;      // stored start states (boundaries mode)
  int64_t exact_sums = 0;      // subtract mode: the states as exact integer sums (ExactSum)
  int64_t token_ids = 0;
  int64_t activations = 0;     // a · B · C
  // Softmax attention only (FeatureMap::kSoftmax, C = L): the B·H·L² attention probabilities
  // every layer keeps for backward, with its L² causal mask, and three more of them transient
  // in one layer's backward.
  int64_t attention_scores = 0;
  int64_t workspace = 0;       // b
  int64_t total = 0;
};

int64_t TrainableParameterCount(const StepShape& shape);
// Bytes of one full set of per-layer attention states (s and z) for the batch.
int64_t StateSetBytes(const StepShape& shape);
// Bytes of the exact sums subtract mode carries instead of float states: per state element,
// 9 limbs of 4 bytes and a flag (engine/exact_sum.h), 9.25 times StateSetBytes.
int64_t ExactSumBytes(const StepShape& shape);

// C is clamped to [1, L]; C ≥ L is ordinary backprop.
MemoryBreakdown PredictPeak(const StepShape& shape, int64_t chunk_size, StartStateMode mode,
                            const MemoryCoefficients& k);
double PredictStepSeconds(const StepShape& shape, int64_t chunk_size, const MemoryCoefficients& k);

struct Plan {
  int64_t chunk_size = 0;
  StartStateMode mode = StartStateMode::kSubtract;
  int64_t predicted_peak_bytes = 0;
  double est_step_seconds = 0;
};

struct PlanResult {
  bool feasible = false;
  Plan plan;                  // when feasible
  int64_t min_quota_bytes = 0;  // smallest quota for which a plan exists (always set)
};

inline constexpr double kDefaultPlanMargin = 0.05;

// Calibration's probes (calibration.h) run at most this many attention blocks of ordinary
// backprop: L_probe = kCalibrationProbeBlocks · attention_block.
inline constexpr int64_t kCalibrationProbeBlocks = 32;
// Softmax attention's probes (ordinary backprop at 2, 4 and 8 blocks): see CalibrationProbeShape.
inline constexpr int64_t kSoftmaxCalibrationProbeBlocks = 8;
// Calibration probes run at the job's batch up to this, and at this beyond it: every fitted
// coefficient is per token (a, and the step time's per-token terms), so a larger batch is the
// same fit, and its probes would only cost more — at batch 50 a tiny model's calibration took
// 37 s and at batch 4000 it could not fit a whole device. Up to 8 the real batch is kept because
// per-op overheads of small models do not grow with batch: batch-1 probes underestimated step
// time at batch 2 by 30–100%. PlannerOnCpu.PlannedStepsStayInsideQuotaAndNearPrediction checks
// a batch above it against measured steps.
inline constexpr int64_t kCalibrationMaxProbeBatch = 8;
inline int64_t CalibrationProbeBatch(int64_t batch) { return batch < kCalibrationMaxProbeBatch ? batch : kCalibrationMaxProbeBatch; }
// The shape calibration's probes run at: batch CalibrationProbeBatch, seq_len L_probe, and with
// learned positions at least L_probe of them (a model whose table is shorter is probed with a
// longer one: the table is a weight, an analytic term, so the fitted coefficients carry over).
StepShape CalibrationProbeShape(const StepShape& shape);

// An upper bound on the memory MeasureCalibration uses for `shape` (its seq_len is not used; its
// batch counts up to kCalibrationMaxProbeBatch),
// from the configuration alone: what slimd reserves on a device while a plan calibrates there
// (docs/service.md, "Calibration"). The analytic terms are PredictPeak's at the largest probe;
// activations are bounded by counting, per token, every tensor a layer keeps for backward and
// the logits' three vocabulary-sized buffers, then doubling (measured probes stay at 0.3–0.7
// of it: PlannerOnCpu.CalibrationStaysInsideItsBound), plus 4 MiB for allocator slack.
int64_t CalibrationPeakBound(const StepShape& shape);

// The largest chunk size (a multiple of the attention block, or L itself) whose predicted peak
// is ≤ quota · (1 − margin) in either start-state mode (both are exact); stored boundaries
// when they fit at that size, subtraction otherwise. min_quota_bytes is the smallest quota for
// which some chunk size fits; if the quota is below it, feasible = false. Softmax attention
// plans L only (ordinary backprop).
PlanResult PlanChunkSize(const StepShape& shape, int64_t quota_bytes, const MemoryCoefficients& k,
                         double margin = kDefaultPlanMargin);

}  // namespace slim
