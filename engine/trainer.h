// A fine-tuning run from a JobSpec: data, model, chunk-size plan, optimizer loop with SLiM
// steps, evaluation, checkpoints, resume and outputs. `slim-train run` is a thin wrapper.
//
// Output directory layout (docs/job-spec.md):
//   spec.json                          the resolved spec
//   checkpoints/step-<8 digits>.safetensors   the newest `checkpoint.keep` checkpoints
//   model.safetensors                  the trained model (LoRA runs: adapters merged in)
//   adapter.safetensors                LoRA runs: the adapters alone
//
// Determinism: every source of randomness is a pure function of the spec's seeds and the step
// (weight and adapter init, split, per-epoch shuffle, favor+ redraws), and a checkpoint stores
// weights, optimizer state, data position and step. On CPU a resumed run therefore produces
// the same losses, bit for bit, as an uninterrupted one with the same chunk size.
//
// Data parallelism (spec data_parallel.workers = N > 1): N calls of RunTraining — one per
// rank, usually one process per device — with the same spec and out_dir, joined through
// options.data_parallel. Every rank draws the same global micro-batches and trains on its share
// (WorkerBatchShare) with the loss divided by the global target count; gradients and losses are
// summed over the ranks, and every rank applies the same clipped optimizer step, so the run
// equals the single-worker run with the same spec up to float summation order (docs/engine.md).
// Rank 0 writes spec.json, checkpoints and outputs and reports the job's events (progress,
// eval, checkpoint, stopped, finished); every rank reports its own started, replanned and
// warning events. A stop requested on any rank stops all of them after the same step, once
// rank 0's checkpoint is written. Every rank resumes from the newest checkpoint in out_dir.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/data_parallel.h"
#include "base/command_answers.h"
#include "base/job_spec.h"
#include "engine/memory_model.h"
#include "base/worker_events.h"

namespace slim {

struct TrainerOptions {
  std::string out_dir;  // required; created if missing
  // Receives every event (started, progress, eval, checkpoint, warning, finished, stopped).
  // Failures are thrown, not reported here: the caller turns them into a `failed` event.
  std::function<void(const TrainingEvent&)> on_event;
  // Checked after every optimizer step; when set, the run writes a checkpoint and returns
  // kStopped (SIGTERM handlers set it).
  const std::atomic<bool>* stop_requested = nullptr;
  // Checked after every optimizer step: a value > 0 that differs from the current quota
  // becomes the new quota (shrink-to-fit): the chunk size is re-planned for it, the memory cap
  // lowered, and a `replanned` event reports the new plan. The math of training is unchanged.
  // A quota that cannot fit the job is refused with a warning and the old one kept.
  const std::atomic<int64_t>* requested_quota_bytes = nullptr;
  // Checked after every optimizer step: a value >= 1 that differs from the BLAS library's
  // thread count becomes it (SetBlasThreads; the host divides the machine's cores among its
  // CPU workers). Progress events report the count in effect.
  const std::atomic<int>* requested_blas_threads = nullptr;
  // Minimum seconds between progress events (0: after every step). The last step always reports.
  double progress_interval_seconds = 1.0;
  // Where planner calibrations are cached ("" measures every time).
  std::string calibration_cache_dir;
  // Where text datasets tokenized with a model's tokenizer are cached ("" tokenizes every
  // time; base/text_tokens.h).
  std::string token_cache_dir;
  // Continue from the newest intact checkpoint in out_dir, if there is one.
  bool resume = true;
  // This run's place in a data-parallel group: world_size must equal the spec's
  // data_parallel.workers (1: no group).
  DataParallelOptions data_parallel;
};

enum class TrainingOutcome { kFinished, kStopped };

struct TrainingResult {
  TrainingOutcome outcome = TrainingOutcome::kFinished;
  int64_t steps = 0;             // optimizer steps completed
  std::string model_path;        // finished (written by rank 0)
  std::string adapter_path;      // finished LoRA runs
  std::string checkpoint_path;   // stopped (written by rank 0)
};

// Runs (or resumes) the job. Throws EngineError: kInvalidArgument for a spec, data, model file
// or checkpoint problem, all found before the first step where possible; kResourceExhausted
// when the quota cannot fit the job or an allocation exceeds it; kInternal otherwise (e.g. the
// loss became NaN, or another rank of a data-parallel group failed or stopped answering).
TrainingResult RunTraining(const JobSpec& spec, const TrainerOptions& options);

// The learning rate for optimizer step `step` (0-based) of `total_steps`.
double ScheduledLearningRate(const JobSpec& spec, int64_t step, int64_t total_steps);

// The planner's view of a job's step on one worker (its share of each micro-batch).
StepShape JobStepShape(const JobSpec& spec, const ModelConfig& model);

// The chunk size and start-state mode a run of `spec` uses: the spec's fixed chunk size, or
// (chunk_size auto) the largest that fits memory.quota on spec.device, calibrated there (the
// calibration is cached in `calibration_cache_dir` unless it is empty). predicted_peak_bytes is
// set whenever there is a quota. Throws EngineError(kResourceExhausted) naming the minimum quota
// when the quota cannot fit the job.
Plan PlanTraining(const JobSpec& spec, const ModelConfig& model, const std::string& calibration_cache_dir);

// Admission's answer for `spec` (slimd's PlanJob and CreateJob, through `slim-train plan --spec
// FILE --json`), from the same calibration and planner as PlanTraining. With `default_quota`
// the spec gave no quota and spec.quota_bytes is the largest device of its kind: the quota
// becomes what ordinary backprop (C = L, the fastest step) needs with the planner's margin, at
// most that. Unlike PlanTraining, a quota that cannot fit is an answer (feasible false, with
// min_quota_bytes), not an error.
AdmissionPlan PlanAdmission(const JobSpec& spec, const ModelConfig& model, const std::string& calibration_cache_dir,
                            bool default_quota);

// Checkpoint files in out_dir, newest (highest step) first.
std::vector<std::string> ListCheckpoints(const std::string& out_dir);

}  // namespace slim
