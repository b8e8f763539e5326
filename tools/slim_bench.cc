// slim-bench: times SLiM training steps (AdamW step included) and measures their peak memory.
// Prints one JSON line per (sequence length, mode, chunk size) measurement.
//
//   slim-bench --preset small --seq-len 8192 --chunk 512 --mode subtract,full --steps 3 --json
#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <string>
#include <vector>

#include "engine/calibration.h"
#include "engine/causal_attention.h"
#include "engine/op_profile.h"
#include "base/errors.h"
#include "engine/memory_model.h"
#include "engine/memory_tracker.h"
#include "engine/model.h"
#include "engine/runtime.h"
#include "engine/slim_step.h"
#include "base/flags.h"
#include "base/hf_config.h"
#include "base/json.h"

namespace {

constexpr char kUsage[] = R"(usage: slim-bench [flags]
  --preset NAME        model preset: tiny, mini, small, paper-iv (default small)
  --hf-config FILE     instead of a preset: the architecture of a Hugging Face config.json
                       (gpt2, llama, mistral, qwen2) with random weights, its attention
                       --feature-map M (default favor+) with --features N per head (default 64)
  --seq-len L[,L..]    sequence lengths (default 8192)
  --chunk C[,C..]      chunk sizes for subtract/boundaries modes (default 512)
  --mode M[,M..]       subtract, boundaries, full (C = L), or sdpa: the baseline, the same
                       model with exact softmax attention over the whole sequence (PyTorch's
                       scaled-dot-product attention on CUDA with LibTorch >= 2.0, flash where
                       available; explicit masked softmax otherwise) (default subtract,full)
  --batch B            sequences per step (default 1)
  --steps N            timed steps per measurement (default 3)
  --warmup N           untimed steps before timing (default 1)
  --precision P        fp32 or bf16 autocast (default fp32)
  --tuning T           full, or lora: adapters on every projection, base frozen (default full)
  --lora-rank R        LoRA rank; alpha = 2R (default 8)
  --device D           cpu, cuda, cuda:N (default cpu)
  --threads N          LibTorch intra-op threads, 0 = slim's default of 1 (BLAS matmuls
                       always use all cores through the BLAS library's own thread pool)
  --seed S             seed for weights and data (default 0)
  --quota Q[,Q..]      instead of --mode/--chunk: plan each quota with the calibrated memory
                       model (sizes like 512MiB), run the planned chunk size and mode, and
                       report predicted vs measured peak and step time
  --profile            after each measurement, one more step with every ATen operator counted:
                       a JSON line {"profile": ...} with kernel-launching operators per slice
                       per layer (the step's, head and embedding included, over slices x layers;
                       AdamW's apart) and the most frequent ones (engine/op_profile.h)
  --torch-attention    on the CPU, attention takes the ATen path CUDA runs, not the BLAS loops
  --json               JSON lines only (default prints a header line first)
example:
  slim-bench --preset small --seq-len 8192,65536 --chunk 512 --mode subtract,full --json
)";

struct Options {
  std::string preset = "small";  // or "hf:<config file stem>" with --hf-config
  std::string hf_config;
  slim::FeatureMap feature_map = slim::FeatureMap::kFavorPlus;
  int64_t features = 64;
  std::vector<int64_t> seq_lens{8192};
  std::vector<int64_t> chunks{512};
  std::vector<std::string> modes{"subtract", "full"};
  int64_t batch = 1;
  int64_t steps = 3;
  int64_t warmup = 1;
  std::string precision = "fp32";
  slim::TuningMode tuning = slim::TuningMode::kFull;
  int64_t lora_rank = 8;
  std::string device = "cpu";
  int threads = 0;  // ConfigureRuntime's policy (see engine/runtime.h)
  uint64_t seed = 0;
  bool json = false;
  bool profile = false;
  bool torch_attention = false;
  std::vector<int64_t> quotas;  // plan-check mode when not empty
};

// Throws EngineError(kInvalidArgument) naming the flag; main reports it with exit status 2.
Options ParseFlags(int argc, char** argv) {
  const slim::tools::Flags flags(argc, argv);
  Options o;
  if (flags.Bool("help")) {
    std::cout << kUsage;
    std::exit(0);
  }
  o.preset = flags.String("preset", o.preset);
  if (flags.Has("hf-config")) o.hf_config = flags.String("hf-config", "");
  o.feature_map = slim::ParseFeatureMap(flags.String("feature-map", "favor+"));
  o.features = flags.Int("features", o.features, 1);
  if (!o.hf_config.empty()) o.preset = "hf:" + std::filesystem::path(o.hf_config).stem().string();
  o.seq_lens = flags.IntList("seq-len", o.seq_lens, 1);
  o.chunks = flags.IntList("chunk", o.chunks, 1);
  o.modes = flags.List("mode", o.modes);
  o.batch = flags.Int("batch", o.batch, 1);
  o.steps = flags.Int("steps", o.steps, 1);
  o.warmup = flags.Int("warmup", o.warmup, 0);
  o.precision = flags.String("precision", o.precision);
  o.tuning = slim::ParseTuningMode(flags.String("tuning", "full"), "--tuning");
  o.lora_rank = flags.Int("lora-rank", o.lora_rank, 1);
  o.device = flags.String("device", o.device);
  o.threads = static_cast<int>(flags.Int("threads", o.threads, 0));
  o.seed = static_cast<uint64_t>(flags.Int("seed", 0, 0));
  o.json = flags.Bool("json");
  o.profile = flags.Bool("profile");
  o.torch_attention = flags.Bool("torch-attention");
  o.quotas = flags.BytesList("quota");
  flags.CheckAllUsed();
  for (const auto& m : o.modes) {
    if (m != "subtract" && m != "boundaries" && m != "full" && m != "sdpa") {
      throw slim::EngineError(slim::ErrorCode::kInvalidArgument,
                              "--mode: unknown mode '" + m + "' (allowed: subtract, boundaries, full, sdpa)");
    }
  }
  return o;
}

void Synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

struct Measurement {
  double step_seconds = 0, min_step_seconds = 0, loss = 0;
  int64_t peak_bytes = 0;
};

Measurement Measure(slim::PerformerLMImpl& model, torch::optim::Optimizer& optimizer,
                    const at::Tensor& tokens, const at::Tensor& targets,
                    const slim::SlimStepOptions& step, const Options& o, const c10::Device& device) {
  auto run_step = [&] {
    optimizer.zero_grad();
    const slim::SlimStepResult r = slim::SlimTrainingStep(model, tokens, targets, step);
    optimizer.step();
    return r.loss;
  };
  for (int64_t i = 0; i < o.warmup; ++i) run_step();
  Synchronize(device);
  slim::ResetPeakMemory(device);
  Measurement m;
  m.min_step_seconds = 1e300;
  for (int64_t i = 0; i < o.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    m.loss = run_step();
    Synchronize(device);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.step_seconds += s / static_cast<double>(o.steps);
    m.min_step_seconds = std::min(m.min_step_seconds, s);
  }
  m.peak_bytes = slim::PeakMemoryBytes(device);
  return m;
}

void PrintMeasurement(const Options& o, const c10::Device& device, int threads, int64_t L, int64_t C,
                      const std::string& mode, const Measurement& m, std::string extra) {
  // The CUDA caching allocator's settings change peaks (e.g. expandable_segments): say which.
  if (const char* conf = std::getenv("PYTORCH_CUDA_ALLOC_CONF"); conf != nullptr && device.is_cuda()) {
    extra += ",\"cuda_alloc_conf\":" + slim::SerializeJson(slim::JsonString(conf));
  }
  const double tokens_per_s = static_cast<double>(o.batch * L) / m.step_seconds;
  std::printf(
      "{\"device\":\"%s\",\"preset\":\"%s\",\"tuning\":\"%s\",\"batch\":%lld,\"L\":%lld,\"C\":%lld,"
      "\"mode\":\"%s\",\"precision\":\"%s\",\"threads\":%d,\"steps\":%lld,"
      "\"step_seconds\":%.6f,\"min_step_seconds\":%.6f,\"tokens_per_s\":%.1f,"
      "\"peak_bytes\":%lld,\"loss\":%.6f%s}\n",
      device.str().c_str(), o.preset.c_str(), slim::TuningModeName(o.tuning).c_str(), static_cast<long long>(o.batch), static_cast<long long>(L),
      static_cast<long long>(C), mode.c_str(), o.precision.c_str(), threads, static_cast<long long>(o.steps),
      m.step_seconds, m.min_step_seconds, tokens_per_s, static_cast<long long>(m.peak_bytes), m.loss,
      extra.c_str());
  std::fflush(stdout);
}

// One more step with every operator counted; prints {"profile": ...} for the measurement.
void PrintProfile(slim::PerformerLMImpl& model, torch::optim::Optimizer& optimizer, const at::Tensor& tokens,
                  const at::Tensor& targets, const slim::SlimStepOptions& step, const Options& o,
                  const c10::Device& device, int64_t L, const std::string& mode) {
  optimizer.zero_grad();
  Synchronize(device);
  slim::OpProfile p;
  int64_t slices = 0;
  {
    slim::OpProfiler profiler;
    slices = slim::SlimTrainingStep(model, tokens, targets, step).slices;
    Synchronize(device);
    const slim::OpProfile before_optimizer = profiler.Snapshot();
    optimizer.step();
    Synchronize(device);
    p = profiler.Snapshot();
    std::printf("{\"profile\":{\"preset\":\"%s\",\"device\":\"%s\",\"L\":%lld,\"C\":%lld,\"mode\":\"%s\","
                "\"slices\":%lld,\"layers\":%lld,\"kernel_ops_step\":%lld,\"kernel_ops_optimizer\":%lld,"
                "\"kernel_ops_per_slice_per_layer\":%.1f,\"host_seconds_in_kernel_ops\":%.6f,\"top\":[",
                o.preset.c_str(), device.str().c_str(), static_cast<long long>(L),
                static_cast<long long>(std::min(step.chunk_size, L)), mode.c_str(), static_cast<long long>(slices),
                static_cast<long long>(model.config().n_layers), static_cast<long long>(p.kernel_ops),
                static_cast<long long>(p.kernel_ops - before_optimizer.kernel_ops),
                static_cast<double>(before_optimizer.kernel_ops) / static_cast<double>(slices * model.config().n_layers),
                p.kernel_host_seconds);
  }
  for (size_t i = 0; i < p.ops.size() && i < 12; ++i) {
    std::string callers;
    for (const auto& [caller, n] : p.ops[i].top_callers) {
      callers += (callers.empty() ? "" : ",") + slim::SerializeJson(slim::JsonString(caller.empty() ? "(top level)" : caller)) + ":" +
                 std::to_string(n);
    }
    std::printf("%s{\"op\":%s,\"count\":%lld,\"host_seconds\":%.6f,\"callers\":{%s}}", i == 0 ? "" : ",",
                slim::SerializeJson(slim::JsonString(p.ops[i].name)).c_str(), static_cast<long long>(p.ops[i].count),
                p.ops[i].host_seconds, callers.c_str());
  }
  std::printf("]}}\n");
  std::fflush(stdout);
}

// Plan-check mode: for each quota, the planner's choice, run and compared with its prediction.
void RunPlanned(slim::PerformerLMImpl& model, torch::optim::Optimizer& optimizer, const at::Tensor& tokens,
                const at::Tensor& targets, const Options& o, const c10::Device& device, int threads,
                int64_t L, slim::Precision precision) {
  slim::StepShape shape;
  shape.model = model.config();
  shape.seq_len = L;
  shape.batch = o.batch;
  shape.precision = precision;
  shape.tuning = o.tuning;
  shape.lora_rank = o.lora_rank;
  slim::CalibrationOptions calibration;
  calibration.cache_dir = slim::DefaultCalibrationCacheDir();
  const slim::MemoryCoefficients k = slim::Calibrate(shape, o.device, calibration);
  for (int64_t quota : o.quotas) {
    const slim::PlanResult r = slim::PlanChunkSize(shape, quota, k);
    if (!r.feasible) {
      std::printf("{\"preset\":\"%s\",\"L\":%lld,\"quota_bytes\":%lld,\"feasible\":false,\"min_quota_bytes\":%lld}\n",
                  o.preset.c_str(), static_cast<long long>(L), static_cast<long long>(quota),
                  static_cast<long long>(r.min_quota_bytes));
      continue;
    }
    slim::SlimStepOptions step;
    step.chunk_size = r.plan.chunk_size;
    step.mode = r.plan.mode;
    step.precision = precision;
    const Measurement m = Measure(model, optimizer, tokens, targets, step, o, device);
    // A ratio JSON can hold: a time model fitted on a loaded machine may estimate 0 s, and
    // "inf" would make the whole line unreadable.
    auto ratio = [](double num, double den) {
      return den > 0 && std::isfinite(num / den) ? std::to_string(num / den) : std::string("null");
    };
    const std::string extra =
        ",\"quota_bytes\":" + std::to_string(quota) +
        ",\"predicted_peak_bytes\":" + std::to_string(r.plan.predicted_peak_bytes) +
        ",\"peak_error\":" + ratio(static_cast<double>(m.peak_bytes - r.plan.predicted_peak_bytes),
                                    static_cast<double>(r.plan.predicted_peak_bytes)) +
        ",\"est_step_seconds\":" + std::to_string(r.plan.est_step_seconds) +
        ",\"time_error\":" + ratio(m.step_seconds - r.plan.est_step_seconds, r.plan.est_step_seconds);
    PrintMeasurement(o, device, threads, L, r.plan.chunk_size, slim::StartStateModeName(r.plan.mode), m, extra);
  }
}

int Run(const Options& o) {
  slim::InstallCpuMemoryTracker();
  if (o.torch_attention) slim::ForceTorchAttentionPath(true);
  const int threads = slim::ConfigureRuntime(o.threads);
  const c10::Device device = slim::ParseDevice(o.device);
  const slim::Precision precision = slim::ParsePrecision(o.precision);
  slim::ModelConfig config;
  if (o.hf_config.empty()) {
    config = slim::PresetConfig(o.preset);
  } else {
    config = slim::ModelConfigFor(slim::ReadHfConfigFile(o.hf_config), o.feature_map, o.features);
  }
  slim::PerformerLM model(config, o.seed);
  if (o.tuning == slim::TuningMode::kLora) model->EnableLora(o.lora_rank, 2.0 * static_cast<double>(o.lora_rank));
  model->to(device);
  std::vector<at::Tensor> trainable;
  for (const at::Tensor& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-4));
  if (!o.json) {
    std::cerr << "slim-bench: preset " << o.preset << " (" << config.ParameterCount()
              << " parameters), device " << device << ", " << threads << " threads\n";
  }

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1);
  for (int64_t L : o.seq_lens) {
    const at::Tensor ids = at::randint(config.vocab_size, {o.batch, L + 1}, gen,
                                       at::TensorOptions().dtype(at::kLong));
    const at::Tensor tokens = ids.narrow(1, 0, L).contiguous().to(device);
    const at::Tensor targets = ids.narrow(1, 1, L).contiguous().to(device);
    if (!o.quotas.empty()) {
      RunPlanned(*model, optimizer, tokens, targets, o, device, threads, L, precision);
      continue;
    }
    for (const std::string& mode : o.modes) {
      if (mode == "sdpa") continue;
      std::vector<int64_t> chunks = mode == "full" ? std::vector<int64_t>{L} : o.chunks;
      for (int64_t C : chunks) {
        slim::SlimStepOptions step;
        step.chunk_size = C;
        step.mode = mode == "boundaries" ? slim::StartStateMode::kBoundaries
                                         : slim::StartStateMode::kSubtract;
        step.precision = precision;
        const Measurement m = Measure(*model, optimizer, tokens, targets, step, o, device);
        PrintMeasurement(o, device, threads, L, std::min(C, L), mode, m, "");
        if (o.profile) PrintProfile(*model, optimizer, tokens, targets, step, o, device, L, mode);
      }
    }
    if (std::find(o.modes.begin(), o.modes.end(), "sdpa") != o.modes.end()) {
      // The baseline: the same architecture with exact softmax attention, whole sequences.
      slim::ModelConfig softmax_config = config;
      softmax_config.feature_map = slim::FeatureMap::kSoftmax;
      slim::PerformerLM softmax_model(softmax_config, o.seed);
      if (o.tuning == slim::TuningMode::kLora) {
        softmax_model->EnableLora(o.lora_rank, 2.0 * static_cast<double>(o.lora_rank));
      }
      softmax_model->to(device);
      std::vector<at::Tensor> softmax_trainable;
      for (const at::Tensor& p : softmax_model->parameters()) {
        if (p.requires_grad()) softmax_trainable.push_back(p);
      }
      torch::optim::AdamW softmax_optimizer(softmax_trainable, torch::optim::AdamWOptions(1e-4));
      slim::SlimStepOptions step;
      step.chunk_size = L;
      step.precision = precision;
      const Measurement m = Measure(*softmax_model, softmax_optimizer, tokens, targets, step, o, device);
      PrintMeasurement(o, device, threads, L, L, "sdpa", m, "");
      if (o.profile) PrintProfile(*softmax_model, softmax_optimizer, tokens, targets, step, o, device, L, "sdpa");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseFlags(argc, argv));
  } catch (const slim::EngineError& e) {
    std::cerr << "slim-bench: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "slim-bench: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
