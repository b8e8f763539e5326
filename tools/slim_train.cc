// slim-train: the fine-tuning worker and standalone CLI. Subcommands so far:
//   plan      choose the chunk size that fits a memory quota (calibrated on this device)
//   devices   list the devices this process can use, with their memory
//   init      write a model file with random weights from a preset
//   generate  sample text from a model file in recurrent mode
//   eval      mean loss and bits per byte of a model file on a data file
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include <cmath>

#include "engine/calibration.h"
#include "engine/dataset.h"
#include "engine/generate.h"
#include "engine/model_file.h"
#include "engine/slim_step.h"
#include "engine/devices.h"
#include "engine/errors.h"
#include "engine/json.h"
#include "engine/memory_model.h"
#include "engine/memory_tracker.h"
#include "engine/runtime.h"
#include "tools/flags.h"

namespace {

constexpr char kUsage[] = R"(usage: slim-train <command> [flags]

commands:
  plan      the largest chunk size whose predicted peak memory fits a quota
  devices   the devices this process can use, with total and free memory
  init      --preset P --out FILE [--seed S]: a model file with random weights
  generate  --model FILE --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--seed S]
  eval      --model FILE --data FILE [--format text|jsonl|ids-u16|ids-u32] --seq-len L
            [--chunk C] [--batch B]: prints {"loss", "bits_per_byte", "tokens"} as JSON

plan flags:
  --preset NAME       model preset: tiny, small, paper-iv (default small)
  --seq-len L         sequence length (required)
  --batch B           sequences per step (default 1)
  --quota BYTES       memory quota; units accepted: 512MiB, 2GiB, 1.5GB (required)
  --device D          cpu, cuda, cuda:N (default cpu)
  --precision P       fp32 or bf16 (default fp32)
  --optimizer O       adamw or sgd (default adamw)
  --tuning T          full or lora (default full)
  --lora-rank R       LoRA rank (default 8)
  --margin F          fraction of the quota kept free (default 0.05)
  --recalibrate       measure again instead of using the cached calibration
  --json              print JSON (default: a human summary)

exit status: 0 planned; 2 bad flags or values; 3 the quota cannot fit (JSON has min_quota_bytes)

examples:
  slim-train plan --preset small --seq-len 65536 --quota 512MiB --json
  slim-train devices --json
  slim-train init --preset tiny --out tiny.safetensors
  slim-train generate --model tiny.safetensors --prompt "Hello" --max-tokens 40 --seed 1
  slim-train eval --model tiny.safetensors --data README.md --seq-len 256
)";

int Plan(const slim::tools::Flags& flags) {
  slim::StepShape shape;
  shape.model = slim::PresetConfig(flags.String("preset", "small"));
  shape.seq_len = flags.Int("seq-len", -1, 1);
  shape.batch = flags.Int("batch", 1, 1);
  shape.precision = slim::ParsePrecision(flags.String("precision", "fp32"), "--precision");
  shape.optimizer = slim::ParseOptimizer(flags.String("optimizer", "adamw"), "--optimizer");
  shape.tuning = slim::ParseTuningMode(flags.String("tuning", "full"), "--tuning");
  shape.lora_rank = flags.Int("lora-rank", 8, 1);
  const int64_t quota = flags.Bytes("quota", -1);
  const double margin = flags.Double("margin", slim::kDefaultPlanMargin);
  const std::string device = flags.String("device", "cpu");
  const bool json = flags.Bool("json");
  flags.CheckAllUsed();
  shape.Validate();

  slim::InstallCpuMemoryTracker();
  slim::ConfigureRuntime();
  slim::CalibrationOptions options;
  if (!flags.Bool("recalibrate")) options.cache_dir = slim::DefaultCalibrationCacheDir();
  const slim::MemoryCoefficients k = slim::Calibrate(shape, device, options);
  const slim::PlanResult r = slim::PlanChunkSize(shape, quota, k, margin);
  if (!r.feasible) {
    if (json) {
      std::printf("{\"error\":\"quota %lld bytes is below the minimum for this job\",\"min_quota_bytes\":%lld}\n",
                  static_cast<long long>(quota), static_cast<long long>(r.min_quota_bytes));
    } else {
      std::fprintf(stderr, "slim-train: quota %s is too small for this job; the minimum is %s (%lld bytes)\n",
                   slim::tools::FormatBytes(quota).c_str(), slim::tools::FormatBytes(r.min_quota_bytes).c_str(),
                   static_cast<long long>(r.min_quota_bytes));
    }
    return 3;
  }
  const slim::Plan& p = r.plan;
  if (json) {
    std::printf("{\"chunk_size\":%lld,\"mode\":\"%s\",\"predicted_peak_bytes\":%lld,\"est_step_seconds\":%.6g,"
                "\"quota_bytes\":%lld,\"min_quota_bytes\":%lld}\n",
                static_cast<long long>(p.chunk_size), slim::StartStateModeName(p.mode).c_str(),
                static_cast<long long>(p.predicted_peak_bytes), p.est_step_seconds,
                static_cast<long long>(quota), static_cast<long long>(r.min_quota_bytes));
  } else {
    std::printf("chunk size %lld (%s), predicted peak %s of %s, about %.3g s per step\n",
                static_cast<long long>(p.chunk_size), slim::StartStateModeName(p.mode).c_str(),
                slim::tools::FormatBytes(p.predicted_peak_bytes).c_str(), slim::tools::FormatBytes(quota).c_str(),
                p.est_step_seconds);
  }
  return 0;
}

int Devices(const slim::tools::Flags& flags) {
  const bool json = flags.Bool("json");
  flags.CheckAllUsed();
  const std::vector<slim::DeviceInfo> devices = slim::DiscoverDevices();
  if (json) std::printf("[");
  for (size_t i = 0; i < devices.size(); ++i) {
    const slim::DeviceInfo& d = devices[i];
    if (json) {
      std::printf("%s{\"name\":\"%s\",\"kind\":\"%s\",\"description\":\"%s\",\"total_bytes\":%lld,\"free_bytes\":%lld}",
                  i ? "," : "", d.name.c_str(), d.kind.c_str(), slim::JsonEscape(d.description).c_str(),
                  static_cast<long long>(d.total_bytes), static_cast<long long>(d.free_bytes));
    } else {
      std::printf("%-8s %-30s total %-10s free %s\n", d.name.c_str(), d.description.c_str(),
                  slim::tools::FormatBytes(d.total_bytes).c_str(), slim::tools::FormatBytes(d.free_bytes).c_str());
    }
  }
  if (json) std::printf("]\n");
  return 0;
}

int Init(const slim::tools::Flags& flags) {
  const slim::ModelConfig config = slim::PresetConfig(flags.String("preset", "small"));
  const std::string out = flags.String("out", "");
  const uint64_t seed = static_cast<uint64_t>(flags.Int("seed", 0, 0));
  flags.CheckAllUsed();
  slim::PerformerLM model(config, seed);
  slim::SaveModelFile(*model, out);
  std::printf("wrote %s (%lld parameters)\n", out.c_str(), static_cast<long long>(config.ParameterCount()));
  return 0;
}

int Generate(const slim::tools::Flags& flags) {
  slim::ConfigureRuntime();
  slim::PerformerLM model = slim::LoadModelFile(flags.String("model", ""));
  const std::string prompt = flags.String("prompt", "");
  slim::SamplingOptions o;
  o.max_new_tokens = flags.Int("max-tokens", 64, 0);
  o.temperature = flags.Double("temperature", 1.0);
  o.top_k = flags.Int("top-k", 0, 0);
  o.seed = static_cast<uint64_t>(flags.Int("seed", 0, 0));
  flags.CheckAllUsed();
  std::vector<int32_t> ids;
  for (unsigned char c : prompt) ids.push_back(c);  // byte vocabulary
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  slim::GenerateTokens(*model, ids, o, [](int32_t t) {
    std::fputc(t < 256 ? t : '?', stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  return 0;
}

int Eval(const slim::tools::Flags& flags) {
  slim::ConfigureRuntime();
  slim::PerformerLM model = slim::LoadModelFile(flags.String("model", ""));
  slim::DataSource source;
  source.path = flags.String("data", "");
  source.format = slim::ParseDataFormat(flags.String("format", "text"), "--format");
  source.vocab_size = model->config().vocab_size;
  const int64_t L = flags.Int("seq-len", -1, 1);
  const int64_t C = flags.Int("chunk", L, 1);
  const int64_t batch = flags.Int("batch", 8, 1);
  flags.CheckAllUsed();
  const std::vector<int32_t> tokens = slim::ReadTokens(source);
  const int64_t n = slim::CountSequences(static_cast<int64_t>(tokens.size()), L, source.path);
  const at::Tensor all = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::kLong);
  double loss_sum = 0;
  for (int64_t first = 0; first < n; first += batch) {
    const int64_t b = std::min(batch, n - first);
    std::vector<at::Tensor> inputs, targets;
    for (int64_t i = first; i < first + b; ++i) {
      inputs.push_back(all.narrow(0, i * L, L));
      targets.push_back(all.narrow(0, i * L + 1, L));
    }
    // Every sequence has L targets, so the mean over sequences is the mean over tokens.
    loss_sum += b * slim::SlicedLoss(*model, at::stack(inputs), at::stack(targets), C, slim::Precision::kFp32);
  }
  const double loss = loss_sum / static_cast<double>(n);
  std::printf("{\"loss\":%.6f,\"bits_per_byte\":%.6f,\"tokens\":%lld,\"sequences\":%lld}\n", loss,
              loss / std::log(2.0), static_cast<long long>(n * L), static_cast<long long>(n));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    const slim::tools::Flags flags(argc - 1, argv + 1);
    if (flags.Bool("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (command == "plan") return Plan(flags);
    if (command == "devices") return Devices(flags);
    if (command == "init") return Init(flags);
    if (command == "generate") return Generate(flags);
    if (command == "eval") return Eval(flags);
    throw slim::EngineError(slim::ErrorCode::kInvalidArgument, "unknown command '" + command + "'");
  } catch (const slim::EngineError& e) {
    std::cerr << "slim-train: " << e.what() << "\n";
    if (e.code() == slim::ErrorCode::kInvalidArgument) std::cerr << "run 'slim-train --help' for usage\n";
    return e.code() == slim::ErrorCode::kInvalidArgument ? 2 : 1;
  }
}
