#include "engine/trainer.h"

#include <ATen/ATen.h>
#include <torch/types.h>  // before clip_grad.h, which uses torch::Tensor undeclared
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <memory>
#include <optional>

#include "base/byte_size.h"
#include "engine/calibration.h"
#include "engine/checkpoint.h"
#include "engine/data_parallel.h"
#include "base/dataset.h"
#include "engine/devices.h"
#include "base/errors.h"
#include "engine/memory_model.h"
#include "engine/memory_tracker.h"
#include "engine/model_file.h"
#include "engine/model_text.h"
#include "engine/runtime.h"
#include "engine/slim_step.h"

namespace slim {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kCheckpointPrefix[] = "step-";
constexpr char kCheckpointSuffix[] = ".safetensors";

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Packed sequences over the tokens of several sources; sequence i starts at starts[i] and has
// seq_len inputs plus one more token as its last target. Sequences never cross sources.
struct Corpus {
  std::vector<int32_t> tokens;
  std::vector<int64_t> starts;
};

Corpus ReadCorpus(const std::vector<DataSource>& sources, const PerformerLMImpl& model, int64_t seq_len,
                  const std::string& token_cache_dir) {
  Corpus c;
  for (const DataSource& source : sources) {
    const std::vector<int32_t> tokens = ReadModelTokens(source, model, token_cache_dir);
    const int64_t n = CountSequences(static_cast<int64_t>(tokens.size()), seq_len, source.path);
    const int64_t base = static_cast<int64_t>(c.tokens.size());
    for (int64_t i = 0; i < n; ++i) c.starts.push_back(base + i * seq_len);
    c.tokens.insert(c.tokens.end(), tokens.begin(), tokens.end());
  }
  return c;
}

// (B, L) inputs and targets for the given sequences, on `device`.
std::pair<at::Tensor, at::Tensor> MakeBatch(const Corpus& corpus, const std::vector<int64_t>& sequences,
                                            int64_t seq_len, c10::Device device) {
  const int64_t B = static_cast<int64_t>(sequences.size());
  at::Tensor inputs = at::empty({B, seq_len}, at::kLong), targets = at::empty({B, seq_len}, at::kLong);
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* out = targets.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* t = corpus.tokens.data() + corpus.starts[sequences[b]];
    for (int64_t i = 0; i < seq_len; ++i) {
      in[b * seq_len + i] = t[i];
      out[b * seq_len + i] = t[i + 1];
    }
  }
  return {inputs.to(device), targets.to(device)};
}

// Training sequences in a fresh seeded order every epoch; the position (epoch, offset) is all
// the state there is, so a checkpoint restores it exactly.
class BatchSampler {
 public:
  BatchSampler(std::vector<int64_t> sequences, uint64_t seed) : sequences_(std::move(sequences)), seed_(seed) {}

  std::vector<int64_t> Next(int64_t batch) {
    std::vector<int64_t> out;
    while (static_cast<int64_t>(out.size()) < batch) {
      if (order_epoch_ != epoch_) {
        // Epoch e's order depends only on (seed, e).
        order_ = ShuffledOrder(static_cast<int64_t>(sequences_.size()), seed_ * 0x9E3779B97F4A7C15ull + epoch_ + 1);
        order_epoch_ = epoch_;
      }
      out.push_back(sequences_[order_[offset_]]);
      if (++offset_ == static_cast<int64_t>(sequences_.size())) {
        ++epoch_;
        offset_ = 0;
      }
    }
    return out;
  }
  int64_t epoch() const { return epoch_; }
  int64_t offset() const { return offset_; }
  void Seek(int64_t epoch, int64_t offset) {
    CheckArgument(offset >= 0 && offset < static_cast<int64_t>(sequences_.size()),
                  "checkpoint: data position " + std::to_string(offset) + " is outside the training set");
    epoch_ = epoch;
    offset_ = offset;
  }

 private:
  std::vector<int64_t> sequences_;
  uint64_t seed_;
  int64_t epoch_ = 0, offset_ = 0;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const JobSpec& spec, const std::vector<at::Tensor>& params) {
  if (spec.optimizer == OptimizerKind::kSgd) {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(spec.lr).momentum(spec.momentum).weight_decay(spec.weight_decay));
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(spec.lr)
                  .betas({spec.beta1, spec.beta2})
                  .eps(spec.eps)
                  .weight_decay(spec.weight_decay));
}

void SetLearningRate(torch::optim::Optimizer& optimizer, OptimizerKind kind, double lr) {
  for (auto& group : optimizer.param_groups()) {
    if (kind == OptimizerKind::kSgd) {
      static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
    } else {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
  }
}

std::string CheckpointName(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%s%08lld%s", kCheckpointPrefix, static_cast<long long>(step), kCheckpointSuffix);
  return buf;
}

int64_t ProgressInt(const SafetensorsMetadata& progress, const std::string& key, const std::string& path) {
  const auto it = progress.find(key);
  char* end = nullptr;
  const long long v = it == progress.end() ? 0 : std::strtoll(it->second.c_str(), &end, 10);
  if (it == progress.end() || it->second.empty() || *end != '\0') {
    throw EngineError(ErrorCode::kInvalidArgument, "checkpoint " + path + ": progress has no integer '" + key + "'");
  }
  return v;
}

// Mean loss over (at most max_sequences of) the validation sequences. In a data-parallel
// group of N, batches are as large as a worker's training share (⌈B/N⌉, so evaluation fits the
// memory planned for training), batch i is evaluated by rank i mod N and the sums are added.
double Evaluate(PerformerLMImpl& model, const Corpus& corpus, const std::vector<int64_t>& sequences,
                const JobSpec& spec, int64_t chunk_size, c10::Device device, DataParallelGroup* group) {
  const int64_t n = spec.eval_max_sequences > 0
                        ? std::min<int64_t>(spec.eval_max_sequences, static_cast<int64_t>(sequences.size()))
                        : static_cast<int64_t>(sequences.size());
  const int64_t batch =
      group == nullptr ? spec.batch_size : (spec.batch_size + group->world_size() - 1) / group->world_size();
  double sum = 0;
  for (int64_t first = 0, index = 0; first < n; first += batch, ++index) {
    if (group != nullptr && index % group->world_size() != group->rank()) continue;
    const int64_t b = std::min(batch, n - first);
    const std::vector<int64_t> ids(sequences.begin() + first, sequences.begin() + first + b);
    const auto [inputs, targets] = MakeBatch(corpus, ids, spec.seq_len, device);
    // Every sequence has seq_len targets, so weighting batch means by b gives the token mean.
    sum += static_cast<double>(b) * SlicedLoss(model, inputs, targets, chunk_size, spec.precision);
  }
  if (group != nullptr) sum = group->Reduce({sum}, ReduceOp::kSum, "evaluation")[0];
  return sum / static_cast<double>(n);
}

// FNV-1a: a hash that is the same in every build, so ranks can compare fingerprints.
uint32_t StableHash(const std::string& text) {
  uint32_t h = 2166136261u;
  for (unsigned char c : text) h = (h ^ c) * 16777619u;
  return h;
}

// Checks that every rank of `group` starts from the same spec and step, then copies rank 0's
// weights and buffers to the others (they loaded the same files; this makes equality an
// invariant rather than an assumption, as DistributedDataParallel does).
void AlignRanks(DataParallelGroup& group, PerformerLMImpl& model, const std::string& fingerprint, int64_t step,
                int64_t total_steps) {
  const std::vector<double> mine = {static_cast<double>(StableHash(fingerprint)), static_cast<double>(step),
                                    static_cast<double>(total_steps)};
  const std::vector<double> lo = group.Reduce(mine, ReduceOp::kMin, "start check");
  const std::vector<double> hi = group.Reduce(mine, ReduceOp::kMax, "start check");
  if (lo[0] != hi[0] || lo[2] != hi[2]) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "data-parallel ranks were given different model, data or training specs; every rank must run "
                      "the same spec");
  }
  if (lo[1] != hi[1]) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "data-parallel ranks would resume from different steps (" + std::to_string(int64_t(lo[1])) +
                          " to " + std::to_string(int64_t(hi[1])) + "); every rank must use the same output directory");
  }
  std::vector<at::Tensor> state;
  for (const at::Tensor& p : model.parameters()) state.push_back(p.detach());
  for (const at::Tensor& b : model.buffers()) state.push_back(b);
  at::NoGradGuard no_grad;
  group.BroadcastFromRankZero(state, "initial weights");
}

// The training and validation sequences of a job, read and checked in full.
struct TrainingData {
  Corpus train;
  Corpus validation;  // empty when the validation sequences are held out of `train`
  std::vector<int64_t> train_sequences, validation_sequences;
  const Corpus& validation_corpus() const { return validation.starts.empty() ? train : validation; }
};

TrainingData LoadTrainingData(const JobSpec& spec, const PerformerLMImpl& model, const std::string& token_cache_dir) {
  TrainingData d;
  d.train = ReadCorpus(spec.train_data, model, spec.seq_len, token_cache_dir);
  const int64_t n = static_cast<int64_t>(d.train.starts.size());
  if (spec.validation_data.empty()) {
    DataSplit split = SplitSequences(n, spec.validation_fraction, spec.data_seed);
    d.train_sequences = std::move(split.train);
    d.validation_sequences = std::move(split.validation);
  } else {
    for (int64_t i = 0; i < n; ++i) d.train_sequences.push_back(i);
    d.validation = ReadCorpus(spec.validation_data, model, spec.seq_len, token_cache_dir);
    for (int64_t i = 0; i < static_cast<int64_t>(d.validation.starts.size()); ++i) d.validation_sequences.push_back(i);
  }
  CheckArgument(!d.train_sequences.empty(), "data.train: no training sequences left after the validation split");
  return d;
}

int64_t TotalSteps(const JobSpec& spec, int64_t train_sequences) {
  if (spec.steps > 0) return spec.steps;
  const double per_step = static_cast<double>(spec.batch_size * spec.grad_accum);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(spec.epochs * static_cast<double>(train_sequences) / per_step)));
}

// Where a run stands, as stored in its checkpoints' progress metadata.
struct RunPosition {
  int64_t step = 0, tokens = 0, epoch = 0, epoch_offset = 0;
};

// Loads the newest intact checkpoint in out_dir into `model` and `optimizer` and returns its
// position; nullopt when out_dir has no checkpoints. Damaged ones are reported through `warn`
// and skipped; if all are damaged, or the newest intact one belongs to a different spec
// (fingerprint), throws EngineError(kInvalidArgument) rather than start over silently.
std::optional<RunPosition> ResumeFromNewestCheckpoint(const std::string& out_dir, const std::string& fingerprint,
                                                      PerformerLMImpl& model, torch::optim::Optimizer& optimizer,
                                                      const std::function<void(const std::string&)>& warn) {
  const std::vector<std::string> paths = ListCheckpoints(out_dir);
  for (const std::string& path : paths) {
    Checkpoint c;
    try {
      c = ReadCheckpoint(path);
    } catch (const EngineError& e) {
      warn(std::string(e.what()) + "; trying an older checkpoint");
      continue;
    }
    const auto f = c.progress.find("fingerprint");
    if (f == c.progress.end() || f->second != fingerprint) {
      throw EngineError(ErrorCode::kInvalidArgument,
                        "checkpoint " + path + " belongs to a run with a different model, data or training spec; "
                        "use a new output directory or restore that spec");
    }
    at::NoGradGuard no_grad;
    const auto saved_params = c.model->named_parameters();
    for (auto& p : model.named_parameters()) p.value().copy_(saved_params[p.key()]);
    const auto saved_buffers = c.model->named_buffers();
    for (auto& b : model.named_buffers()) b.value().copy_(saved_buffers[b.key()]);
    RestoreOptimizer(c, optimizer, model.parameters().front().device());
    RunPosition position;
    position.step = ProgressInt(c.progress, "step", path);
    position.tokens = ProgressInt(c.progress, "tokens", path);
    position.epoch = ProgressInt(c.progress, "epoch", path);
    position.epoch_offset = ProgressInt(c.progress, "epoch_offset", path);
    return position;
  }
  if (!paths.empty()) {
    throw EngineError(ErrorCode::kInvalidArgument, "no intact checkpoint in " + out_dir +
                                                       "/checkpoints (see the warnings); remove the damaged files to start over");
  }
  return std::nullopt;
}

}  // namespace

double ScheduledLearningRate(const JobSpec& spec, int64_t step, int64_t total_steps) {
  if (step < spec.warmup_steps) {
    return spec.lr * static_cast<double>(step + 1) / static_cast<double>(spec.warmup_steps);
  }
  if (spec.schedule == LrScheduleKind::kConstant) return spec.lr;
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - spec.warmup_steps - 1));
  const double progress = std::min(1.0, static_cast<double>(step - spec.warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return spec.lr * (spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * cosine);
}

std::vector<std::string> ListCheckpoints(const std::string& out_dir) {
  std::vector<std::pair<std::string, std::string>> found;  // (name, path)
  const fs::path dir = fs::path(out_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    // step-<8 digits>.safetensors; temporary files of interrupted writes do not match.
    if (name.size() == CheckpointName(0).size() && name.rfind(kCheckpointPrefix, 0) == 0 &&
        name.compare(name.size() - std::strlen(kCheckpointSuffix), std::string::npos, kCheckpointSuffix) == 0) {
      found.emplace_back(name, entry.path().string());
    }
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (const auto& f : found) out.push_back(f.second);
  return out;
}

StepShape JobStepShape(const JobSpec& spec, const ModelConfig& model) {
  StepShape shape;
  shape.model = model;
  // A worker holds its share of each micro-batch; the largest share has ⌈B/N⌉ sequences.
  shape.batch = (spec.batch_size + spec.workers - 1) / spec.workers;
  shape.seq_len = spec.seq_len;
  shape.precision = spec.precision;
  shape.optimizer = spec.optimizer;
  shape.tuning = spec.tuning;
  shape.lora_rank = spec.lora_rank;
  return shape;
}

namespace {

// Softmax attention has no prefix-sum state: a fixed chunk below the sequence length cannot run.
// Refused when the job is planned (admission), not at its first step.
void CheckChunkable(const JobSpec& spec, const ModelConfig& model) {
  if (model.feature_map != FeatureMap::kSoftmax || spec.chunk_size == 0 || spec.chunk_size >= spec.seq_len) return;
  throw EngineError(ErrorCode::kInvalidArgument,
                    "memory.chunk_size: " + std::to_string(spec.chunk_size) + " is below training.seq_len " +
                        std::to_string(spec.seq_len) +
                        ", but this model's attention is softmax (exact, quadratic): it has no prefix-sum state to "
                        "carry between slices and trains only with ordinary backprop. Leave memory.chunk_size "
                        "unset, or convert the model to Performer features (slim-train import-hf --feature-map "
                        "favor+) to train in slices");
}

}  // namespace

Plan PlanTraining(const JobSpec& spec, const ModelConfig& model, const std::string& calibration_cache_dir) {
  CheckChunkable(spec, model);
  Plan plan;
  plan.chunk_size = spec.chunk_size;
  plan.mode = spec.mode.value_or(StartStateMode::kSubtract);
  if (spec.quota_bytes == 0) return plan;  // a fixed chunk size, no quota: nothing to predict
  const StepShape shape = JobStepShape(spec, model);
  CalibrationOptions calibration;
  calibration.cache_dir = calibration_cache_dir;
  const MemoryCoefficients k = Calibrate(shape, spec.device, calibration);
  if (spec.chunk_size == 0) {
    const PlanResult r = PlanChunkSize(shape, spec.quota_bytes, k);
    if (!r.feasible) {
      throw EngineError(ErrorCode::kResourceExhausted,
                        "memory.quota: " + FormatBytes(spec.quota_bytes) + " cannot fit this job; the minimum is " +
                            FormatBytes(r.min_quota_bytes) + " (" + std::to_string(r.min_quota_bytes) + " bytes)" +
                            (model.feature_map == FeatureMap::kSoftmax
                                 ? " — softmax attention trains only whole sequences, so no smaller chunk exists"
                                 : ""));
    }
    plan = r.plan;
    if (spec.mode) plan.mode = *spec.mode;
  }
  plan.predicted_peak_bytes = PredictPeak(shape, plan.chunk_size, plan.mode, k).total;
  return plan;
}

AdmissionPlan PlanAdmission(const JobSpec& spec_in, const ModelConfig& model, const std::string& calibration_cache_dir,
                            bool default_quota) {
  CheckChunkable(spec_in, model);
  JobSpec spec = spec_in;
  const StepShape shape = JobStepShape(spec, model);
  CalibrationOptions calibration;
  calibration.cache_dir = calibration_cache_dir;
  const MemoryCoefficients k = Calibrate(shape, spec.device, calibration);
  // Ordinary backprop's predicted peak: the default quota policy's base, and what SLiM saves.
  const int64_t full_length = PredictPeak(shape, spec.seq_len, spec.mode.value_or(StartStateMode::kSubtract), k).total;
  if (default_quota) {  // ordinary backprop's predicted peak, with the margin and 1 MiB
    const int64_t wanted =
        static_cast<int64_t>(std::ceil(static_cast<double>(full_length) / (1.0 - kDefaultPlanMargin))) + (int64_t{1} << 20);
    spec.quota_bytes = std::min(spec.quota_bytes, wanted);
  }
  const PlanResult r = PlanChunkSize(shape, spec.quota_bytes, k);
  AdmissionPlan answer;
  answer.quota_bytes = spec.quota_bytes;
  answer.full_backprop_peak_bytes = full_length;
  answer.min_quota_bytes = r.min_quota_bytes;
  answer.mode = spec.mode.value_or(StartStateMode::kSubtract);
  if (spec.chunk_size > 0) {
    answer.chunk_size = spec.chunk_size;
    answer.predicted_peak_bytes = PredictPeak(shape, spec.chunk_size, answer.mode, k).total;
    answer.feasible = answer.predicted_peak_bytes <= spec.quota_bytes;
    // The spec fixes the chunk size: the smallest quota that fits is that chunk's peak, not
    // the automatic plan's minimum (which may be far smaller).
    answer.min_quota_bytes = answer.predicted_peak_bytes;
    answer.est_step_seconds = PredictStepSeconds(shape, spec.chunk_size, k);
  } else if (r.feasible) {
    answer.feasible = true;
    answer.chunk_size = r.plan.chunk_size;
    answer.mode = spec.mode.value_or(r.plan.mode);
    answer.predicted_peak_bytes = r.plan.predicted_peak_bytes;
    answer.est_step_seconds = r.plan.est_step_seconds;
  }
  return answer;
}

TrainingResult RunTraining(const JobSpec& spec, const TrainerOptions& options) {
  spec.Validate();
  CheckArgument(!options.out_dir.empty(), "output directory is required");
  const DataParallelOptions& dp = options.data_parallel;
  ValidateDataParallelOptions(dp);
  if (dp.world_size != spec.workers) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      dp.world_size == 1
                          ? "spec: data_parallel.workers: " + std::to_string(spec.workers) +
                                " workers run as one slim-train process per rank with --dist-rank, --dist-world-size " +
                                std::to_string(spec.workers) + " and --dist-init (docs/worker-protocol.md)"
                          : "dist-world-size: " + std::to_string(dp.world_size) +
                                " differs from the spec's data_parallel.workers " + std::to_string(spec.workers));
  }
  // Rank 0 leads: it writes every file and reports the job's events.
  const bool lead = dp.rank == 0;
  auto emit = [&](TrainingEvent e) {
    e.time = Now();
    if (options.on_event) options.on_event(e);
  };
  auto emit_job_event = [&](const TrainingEvent& e) {
    if (lead) emit(e);
  };
  const c10::Device device = ParseDevice(spec.device);

  // 1. Model, then every byte of data, before anything is planned or trained.
  PerformerLM model = spec.base_model.empty() ? PerformerLM(PresetConfig(spec.preset), spec.init_seed)
                                              : LoadModelFile(spec.base_model);
  const ModelConfig config = model->config();
  const TrainingData data = LoadTrainingData(spec, *model, options.token_cache_dir);
  const int64_t sequences_per_step = spec.batch_size * spec.grad_accum;
  const int64_t total_steps = TotalSteps(spec, static_cast<int64_t>(data.train_sequences.size()));
  if (spec.tuning == TuningMode::kLora) model->EnableLora(spec.lora_rank, spec.lora_alpha, spec.lora_targets);
  model->to(device);

  // 2. The plan: the chunk size that fits the quota (measured on this device kind).
  Plan plan = PlanTraining(spec, config, options.calibration_cache_dir);
  int64_t quota_bytes = spec.quota_bytes;
  int64_t last_requested_quota = 0;  // a refused request is not retried every step

  // The group forms once every rank has its model, data and plan: errors in those (the same
  // spec on every rank) are found before anyone waits for the others.
  std::unique_ptr<DataParallelGroup> group;
  if (dp.world_size > 1) group = DataParallelGroup::Join(dp, spec.device);

  // 3. Optimizer over the trainable parameters, and the state to resume from.
  std::vector<at::Tensor> trainable;
  for (const at::Tensor& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  std::unique_ptr<torch::optim::Optimizer> optimizer = MakeOptimizer(spec, trainable);
  BatchSampler sampler(data.train_sequences, spec.data_seed);
  int64_t step = 0, tokens = 0, resumed_from = -1;
  const std::string fingerprint = TrainingFingerprint(spec);
  if (lead) fs::create_directories(fs::path(options.out_dir) / "checkpoints");
  if (options.resume) {
    const auto warn = [&](const std::string& message) {
      TrainingEvent w;
      w.kind = EventKind::kWarning;
      w.code = ErrorCodeName(ErrorCode::kInvalidArgument);
      w.message = message;
      emit(w);
    };
    if (const auto position = ResumeFromNewestCheckpoint(options.out_dir, fingerprint, *model, *optimizer, warn)) {
      step = resumed_from = position->step;
      tokens = position->tokens;
      sampler.Seek(position->epoch, position->epoch_offset);
    }
  }
  if (group) AlignRanks(*group, *model, fingerprint, step, total_steps);
  if (lead) {
    WriteFileAtomically((fs::path(options.out_dir) / "spec.json").string(), SerializeJson(JobSpecToJson(spec)) + "\n");
  }

  // 4. The quota becomes a hard cap for the rest of the run.
  if (spec.quota_bytes > 0) CapDeviceMemory(spec.device, spec.quota_bytes);
  const bool track_memory = device.is_cuda() || CpuMemoryTrackerInstalled();
  if (track_memory) ResetPeakMemory(device);

  // An event of `kind` stamped with where the run stands now.
  const auto event = [&](EventKind kind) {
    TrainingEvent e;
    e.kind = kind;
    e.step = step;
    e.total_steps = total_steps;
    return e;
  };
  TrainingEvent started = event(EventKind::kStarted);
  started.device = spec.device;
  started.quota_bytes = spec.quota_bytes;
  started.chunk_size = plan.chunk_size;
  started.mode = StartStateModeName(plan.mode);
  started.predicted_peak_bytes = plan.predicted_peak_bytes;
  started.resumed_from_step = resumed_from;
  started.rank = dp.rank;
  started.world_size = dp.world_size;
  emit(started);

  SlimStepOptions step_options;
  step_options.chunk_size = plan.chunk_size;
  step_options.mode = plan.mode;
  step_options.precision = spec.precision;
  // This rank's share of every micro-batch. With a group, each share's loss is divided by the
  // global batch's target count (every sequence has seq_len targets, none ignored), so summing
  // over ranks gives the global mean and its gradient.
  const BatchShare share = WorkerBatchShare(spec.batch_size, dp.rank, dp.world_size);
  if (group) step_options.loss_normalizer = spec.batch_size * spec.seq_len;

  // Rank 0 writes; every rank gets the path.
  auto write_checkpoint = [&]() -> std::string {
    const std::string path = (fs::path(options.out_dir) / "checkpoints" / CheckpointName(step)).string();
    if (!lead) return path;
    SafetensorsMetadata progress = {{"step", std::to_string(step)},
                                    {"tokens", std::to_string(tokens)},
                                    {"epoch", std::to_string(sampler.epoch())},
                                    {"epoch_offset", std::to_string(sampler.offset())},
                                    {"fingerprint", fingerprint}};
    try {
      SaveCheckpoint(path, *model, *optimizer, progress);
    } catch (const EngineError& e) {
      // A full or unwritable disk: the write left nothing behind, and older checkpoints are only
      // pruned after a successful one, so the newest one on disk is still whole.
      const std::vector<std::string> kept = ListCheckpoints(options.out_dir);
      throw EngineError(e.code(), "checkpoint at step " + std::to_string(step) + " not written: " + e.what() +
                                      (kept.empty() ? std::string("; no earlier checkpoint")
                                                    : "; the newest checkpoint " + kept.front() + " is kept"));
    }
    const std::vector<std::string> all = ListCheckpoints(options.out_dir);
    for (size_t i = static_cast<size_t>(spec.checkpoints_kept); i < all.size(); ++i) fs::remove(all[i]);
    TrainingEvent e = event(EventKind::kCheckpoint);
    e.path = path;
    emit(e);
    return path;
  };
  auto run_eval = [&]() {
    if (data.validation_sequences.empty()) return;
    TrainingEvent e = event(EventKind::kEval);
    e.eval_loss = Evaluate(*model, data.validation_corpus(), data.validation_sequences, spec, plan.chunk_size, device,
                           group.get());
    emit_job_event(e);
  };

  // 5. The loop. Each optimizer step: grad_accum SLiM steps, clip, scheduled lr, update.
  const int64_t first_step = step;
  double train_seconds = 0, last_progress = -1e300;
  while (step < total_steps) {
    const auto t0 = Clock::now();
    model->MaybeRedrawFeatures(step);
    for (at::Tensor& p : trainable) p.mutable_grad() = at::Tensor();
    double loss = 0;
    for (int64_t micro = 0; micro < spec.grad_accum; ++micro) {
      // Every rank draws the same global micro-batch and trains on its share of it.
      const std::vector<int64_t> batch = sampler.Next(spec.batch_size);
      const std::vector<int64_t> mine(batch.begin() + share.begin, batch.begin() + share.end);
      const auto [inputs, targets] = MakeBatch(data.train, mine, spec.seq_len, device);
      loss += SlimTrainingStep(*model, inputs, targets, step_options).loss;
    }
    if (group) {
      // Σ over ranks of the shares' gradients (and losses) = the global batch's. Afterwards
      // every rank holds the same gradients, so clipping and the update agree everywhere.
      std::vector<at::Tensor> grads;
      for (at::Tensor& p : trainable) {
        if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
        if (!p.grad().is_contiguous()) p.mutable_grad() = p.grad().contiguous();
        grads.push_back(p.grad());
      }
      const std::string at_step = " at step " + std::to_string(step + 1);
      group->SumInPlace(grads, "gradient all-reduce" + at_step);
      loss = group->Reduce({loss}, ReduceOp::kSum, "loss all-reduce" + at_step)[0];
    }
    loss /= static_cast<double>(spec.grad_accum);
    if (!std::isfinite(loss)) {
      throw EngineError(ErrorCode::kInternal, "training diverged: the loss is not finite at step " + std::to_string(step + 1) +
                                                  " (try a lower training.optimizer.lr or grad_clip)");
    }
    if (spec.grad_accum > 1) {
      at::NoGradGuard no_grad;
      for (at::Tensor& p : trainable) {
        if (p.grad().defined()) p.mutable_grad().div_(static_cast<double>(spec.grad_accum));
      }
    }
    const double grad_norm =
        torch::nn::utils::clip_grad_norm_(trainable, spec.grad_clip > 0 ? spec.grad_clip : INFINITY);
    const double lr = ScheduledLearningRate(spec, step, total_steps);
    SetLearningRate(*optimizer, spec.optimizer, lr);
    optimizer->step();
    ++step;
    tokens += sequences_per_step * spec.seq_len;
    const double step_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    train_seconds += step_seconds;

    const double now = Now();
    if (step == total_steps || now - last_progress >= options.progress_interval_seconds) {
      last_progress = now;
      TrainingEvent e = event(EventKind::kProgress);
      e.loss = loss;
      e.lr = lr;
      e.grad_norm = grad_norm;
      e.tokens = tokens;
      const double per_step = train_seconds / static_cast<double>(step - first_step);
      e.tokens_per_second = static_cast<double>(sequences_per_step * spec.seq_len) / per_step;
      e.eta_seconds = per_step * static_cast<double>(total_steps - step);
      e.peak_bytes = track_memory ? PeakMemoryBytes(device) : 0;
      e.current_bytes = track_memory ? CurrentMemoryBytes(device) : 0;
      e.step_seconds = step_seconds;
      e.blas_threads = BlasThreads();
      emit_job_event(e);
    }
    if (spec.eval_every > 0 && step % spec.eval_every == 0 && step < total_steps) run_eval();
    if (options.requested_blas_threads != nullptr) {
      const int threads = options.requested_blas_threads->load();
      if (threads >= 1 && threads != BlasThreads()) SetBlasThreads(threads);
    }
    if (options.requested_quota_bytes != nullptr) {
      const int64_t requested = options.requested_quota_bytes->load();
      if (requested > 0 && requested != quota_bytes && requested != last_requested_quota) {
        last_requested_quota = requested;
        JobSpec replanned_spec = spec;
        replanned_spec.quota_bytes = requested;
        replanned_spec.chunk_size = 0;
        TrainingEvent e = event(EventKind::kReplanned);
        try {
          plan = PlanTraining(replanned_spec, config, options.calibration_cache_dir);
          CapDeviceMemory(spec.device, requested);
          // The peak reported from here on is the new quota's: a job that was shrunk must not
          // show a peak above the quota it now runs in.
          if (track_memory) ResetPeakMemory(device);
          quota_bytes = requested;
          step_options.chunk_size = plan.chunk_size;
          step_options.mode = plan.mode;
          e.device = spec.device;
          e.quota_bytes = quota_bytes;
          e.chunk_size = plan.chunk_size;
          e.mode = StartStateModeName(plan.mode);
          e.predicted_peak_bytes = plan.predicted_peak_bytes;
        } catch (const EngineError& error) {
          e.kind = EventKind::kWarning;
          e.code = ErrorCodeName(ErrorCode::kResourceExhausted);
          e.message = std::string("new quota refused, keeping ") + FormatBytes(quota_bytes) + ": " + error.what();
        }
        emit(e);
      }
    }
    bool stop = options.stop_requested != nullptr && options.stop_requested->load();
    // A stop asked of any rank stops them all after this step.
    if (group) stop = group->Reduce({stop ? 1.0 : 0.0}, ReduceOp::kMax, "stop agreement")[0] > 0;
    if (stop && step < total_steps) {
      TrainingResult result;
      result.outcome = TrainingOutcome::kStopped;
      result.steps = step;
      result.checkpoint_path = write_checkpoint();
      // The others exit (status 75: resumable) only once rank 0's checkpoint is on disk.
      if (group) group->Barrier("checkpoint before stopping");
      TrainingEvent e = event(EventKind::kStopped);
      e.path = result.checkpoint_path;
      emit_job_event(e);
      return result;
    }
    if (spec.checkpoint_every > 0 && step % spec.checkpoint_every == 0 && step < total_steps) write_checkpoint();
  }

  // 6. Final evaluation and outputs.
  run_eval();
  TrainingResult result;
  result.steps = step;
  result.model_path = (fs::path(options.out_dir) / "model.safetensors").string();
  if (model->lora_enabled()) result.adapter_path = (fs::path(options.out_dir) / "adapter.safetensors").string();
  if (lead) {
    model->to(at::kCPU);
    if (model->lora_enabled()) {
      SaveLoraAdapter(*model, result.adapter_path);
      SaveModelFile(*model->MergedCopy(), result.model_path);
    } else {
      SaveModelFile(*model, result.model_path);
    }
  }
  const int64_t peak_bytes = track_memory ? PeakMemoryBytes(device) : 0;
  // The others finish (status 0) only once the outputs are on disk.
  if (group) group->Barrier("final outputs");
  TrainingEvent done = event(EventKind::kFinished);
  done.path = result.model_path;
  done.adapter_path = result.adapter_path;
  done.tokens = tokens;
  done.peak_bytes = peak_bytes;
  emit_job_event(done);
  return result;
}

}  // namespace slim
