// The fine-tuning job spec: everything `slim-train run` needs to train, read from a YAML or JSON
// document (docs/job-spec.md has the schema with an example). Plain C++ (no LibTorch), so the
// service validates specs with exactly the rules the worker applies.
//
// Every field is checked when the spec is read; errors are EngineError(kInvalidArgument) that
// name the field by its path ("training.optimizer.lr: must be > 0, got -1"), and unknown
// fields are refused (a typo must not silently fall back to a default).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/dataset.h"
#include "base/json.h"
#include "base/model_config.h"
#include "base/training_options.h"

namespace slim {

enum class LrScheduleKind {
  kConstant,  // lr after a linear warmup
  kCosine,    // linear warmup, then cosine decay to min_lr_ratio · lr at the last step
};
std::string LrScheduleName(LrScheduleKind k);

// The projections LoRA adapters can attach to, by their tensor names (docs/model-format.md).
const std::vector<std::string>& LoraTargetNames();

// Upper bounds on spec values (docs/job-spec.md, "Limits"): far above what a 2-core machine or a
// GPU fleet trains, and low enough that products of them (tokens per optimizer step: batch ·
// grad_accum · seq_len ≤ 2^54; step counts times anything per step) stay inside int64.
struct SpecLimits {
  static constexpr int64_t kMaxSeqLen = int64_t{1} << 22;  // 4,194,304 tokens; also chunk_size
  static constexpr int64_t kMaxBatchSize = 65536;
  static constexpr int64_t kMaxGradAccum = 65536;
  static constexpr int64_t kMaxSteps = 1000000000;  // steps, warmup, eval and checkpoint cadence
  static constexpr double kMaxEpochs = 1e6;
  static constexpr double kMaxLr = 10;
  static constexpr double kMaxWeightDecay = 10;
  static constexpr double kMaxGradClip = 1e6;
  static constexpr int64_t kMaxLoraRank = 4096;
  static constexpr double kMaxLoraAlpha = 1e6;
  static constexpr int64_t kMaxWorkers = 1024;
  static constexpr int64_t kMaxCheckpointsKept = 1000;
};

// What a spec document may leave out when it is read.
struct SpecReading {
  // memory.quota may be absent with an automatic chunk size: a policy supplies it after reading
  // (slimd's default quota, `slim-train plan --default-quota-cap`; docs/service.md). The spec
  // is read with quota_bytes 0; every other rule applies.
  bool quota_from_policy = false;
};

struct JobSpec {
  // model: a model file to fine-tune, or a preset with random weights.
  std::string base_model;  // path; empty when `preset` is used
  std::string preset;
  uint64_t init_seed = 0;  // weights of a preset model; LoRA adapter init

  // data: training sources, validation sources or a fraction of the training sequences.
  std::vector<DataSource> train_data;
  std::vector<DataSource> validation_data;
  double validation_fraction = 0.1;  // used when validation_data is empty
  uint64_t data_seed = 0;            // split and per-epoch shuffling

  // training
  int64_t seq_len = 0;
  int64_t batch_size = 1;    // sequences per micro-batch
  int64_t grad_accum = 1;    // micro-batches per optimizer step
  int64_t steps = 0;         // optimizer steps; exactly one of steps / epochs is > 0
  double epochs = 0;         // passes over the training sequences (may be fractional)
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  double lr = 3e-4;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double momentum = 0.0;                          // SGD
  LrScheduleKind schedule = LrScheduleKind::kConstant;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;  // cosine: the final lr as a fraction of lr
  double grad_clip = 1.0;     // max global L2 norm of the gradient; 0 disables clipping
  Precision precision = Precision::kFp32;
  TuningMode tuning = TuningMode::kFull;
  int64_t lora_rank = 8;
  double lora_alpha = 16;
  std::vector<std::string> lora_targets;  // empty means all of LoraTargetNames()

  // memory
  std::string device = "cpu";
  int64_t quota_bytes = 0;  // 0: no quota (the chunk size must then be given)
  int64_t chunk_size = 0;   // 0: "auto", planned to fit the quota
  std::optional<StartStateMode> mode;  // unset: "auto" (the planner's choice, or subtract)

  // data_parallel: the number of workers (ranks, one device each) that share every micro-batch.
  // The global batch, and so the math of training, does not depend on it: a checkpoint written
  // by N workers resumes with any M (it is not part of the fingerprint).
  int64_t workers = 1;

  // evaluation and checkpoints (0 disables the periodic ones; a final eval always runs when
  // there is validation data)
  int64_t eval_every = 0;
  int64_t eval_max_sequences = 0;  // 0: the whole validation set
  int64_t checkpoint_every = 0;
  int64_t checkpoints_kept = 2;

  // Cross-field checks (steps xor epochs, chunk auto needs a quota, ...).
  void Validate(const SpecReading& reading = {}) const;
};


// Data parallelism splits each micro-batch of `batch_size` sequences into contiguous shares:
// worker `rank` of `workers` takes sequences [begin, end) = [⌊rank·B/N⌋, ⌊(rank+1)·B/N⌋), so
// shares differ by at most one sequence and, with workers ≤ batch_size, none is empty.
struct BatchShare {
  int64_t begin = 0, end = 0;
};
BatchShare WorkerBatchShare(int64_t batch_size, int64_t rank, int64_t workers);

// Reads a spec from a parsed document (ParseStructuredFile). Relative data and model paths are
// resolved against `base_dir` (the spec file's directory) when it is not empty. Integers may
// also be decimal strings, the form proto3's JSON mapping gives 64-bit fields, so that the
// service's API spec is read as protobuf prints it (docs/service.md, "One spec path").
JobSpec JobSpecFromJson(const Json& doc, const std::string& base_dir = "", const SpecReading& reading = {});

// The spec with every field resolved, as a document JobSpecFromJson reads back to an equal spec.
Json JobSpecToJson(const JobSpec& spec);

// The fields that determine the training trajectory (model, data, training and seeds), as
// canonical JSON. A checkpoint can resume a spec only if these are equal; memory, device,
// data-parallel workers, evaluation and checkpoint settings may change between runs (e.g. a
// smaller chunk size, or the same job on fewer devices).
std::string TrainingFingerprint(const JobSpec& spec);

}  // namespace slim
