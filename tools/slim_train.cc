// slim-train: the fine-tuning worker and standalone CLI. Subcommands:
//   run       train from a job spec (YAML or JSON); the server runs this as its worker
//   plan      choose the chunk size that fits a memory quota (calibrated on this device)
//   devices   list the devices this process can use, with their memory
//   footprint what a worker process on a device uses beyond its tensors
//   init      write a model file with random weights from a preset
//   generate  sample text from a model file in recurrent mode
//   eval      mean loss and bits per byte of a model file on a data file
//   merge     merge a LoRA adapter file into its base model
#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/calibration.h"
#include "base/command_answers.h"
#include "engine/data_parallel.h"
#include "base/dataset.h"
#include "engine/generate.h"
#include "base/hf_config.h"
#include "engine/hf_import.h"
#include "engine/model_file.h"
#include "engine/model_text.h"
#include "base/tokenizer.h"
#include "engine/slim_step.h"
#include "engine/devices.h"
#include "base/errors.h"
#include "base/job_spec.h"
#include "base/json.h"
#include "engine/trainer.h"
#include "base/worker_events.h"
#include "base/yaml.h"
#include "engine/memory_model.h"
#include "engine/memory_tracker.h"
#include "engine/runtime.h"
#include "base/flags.h"

namespace {

constexpr char kUsage[] = R"(usage: slim-train <command> [flags]

commands:
  run       --spec FILE --out DIR: fine-tune as the spec says (docs/job-spec.md); resumes from
            the newest checkpoint in DIR
  plan      the largest chunk size whose predicted peak memory fits a quota: for a whole spec
            (--spec FILE [--default-quota-cap BYTES]) or a shape (--preset, --seq-len, ...)
  devices   the devices this process can use, with total and free memory
  build-info  what this binary was built against, as JSON: LibTorch version, C++ standard,
            CUDA support and visible CUDA devices, data-parallel backends
  footprint [--device D]: what a worker process on D (cpu, cuda:N) uses beyond its tensors,
            which slimd counts beside each worker's quota
  inspect   --model FILE: load a model file whole and print its config and parameter count
  init      --preset P --out FILE [--seed S]: a model file with random weights; or
            --hf-config FILE [--feature-map M] [--features N]: a Hugging Face config's
            architecture (attention softmax unless M says otherwise); [--tokenizer FILE|DIR]: a
            tokenizer.json or tokenizer.model for the model file to carry
  generate  --model FILE --prompt TEXT|--prompt-file FILE [--max-tokens N] [--temperature T]
            (text through the model's tokenizer, or bytes for models without one)
            [--top-k K] [--seed S] [--device D] [--memory-cap BYTES]
            [--ids: only the new token ids, one per line; with --with-bytes "ID HEX" lines, HEX
            the bytes each adds to the text, then "end HEX" for bytes held back to the end]
  eval      --model FILE --data FILE [--format text|jsonl|ids-u16|ids-u32] --seq-len L
            [--chunk C] [--batch B]: prints {"loss" (nats per token), "bits_per_byte", "tokens",
            "bytes", "sequences"} as JSON; text is read with the model's tokenizer
  merge     --base FILE --adapter FILE --out FILE: a model file with the LoRA adapters merged in
  import-hf --dir DIR --out FILE [--feature-map softmax|favor+|relu|elu+1|sqr|learned] [--features M]:
            a Hugging Face checkpoint (gpt2, llama, mistral, qwen2; config.json and safetensors,
            sharded or not, F32/F16/BF16) as a slim model file; softmax (the default) keeps the
            checkpoint's exact attention, a feature map converts it (docs/model-format.md); the
            directory's tokenizer.json or tokenizer.model goes into the model file
  export-hf --model FILE --out DIR: a softmax model (gpt2, llama or qwen2 layout, e.g. one
            imported and fine-tuned) as a Hugging Face checkpoint: config.json, model.safetensors
            (and the tokenizer file the model carries)
  logits    --model FILE --tokens ID,ID,...: the model's logits at every position, as JSON
            {"tokens": [...], "logits": [[...], ...]} (for checking an import)

run flags:
  --spec FILE               job spec, YAML (.yaml/.yml) or JSON (.json)
  --out DIR                 output directory: spec.json, checkpoints/, model.safetensors,
                            adapter.safetensors (LoRA)
  --events-fd N             worker mode: write one JSON event per line to file descriptor N
                            (started, progress, eval, checkpoint, warning, finished, stopped,
                            failed; docs/worker-protocol.md)
  --progress-interval S     seconds between progress reports (default 1; 0 = every step)
  --no-resume               start over even if DIR has checkpoints (they are kept until
                            replaced)
  --threads N               LibTorch intra-op threads (default 1, see docs/engine.md)
  --blas-threads N          OpenBLAS threads for matmuls (default: the library's, every core);
                            slimd gives each CPU worker its share of the cores
  --control-stdin           worker mode: read control commands from stdin, one JSON per line:
                            {"command":"set_quota","quota_bytes":N} re-plans the chunk size
                            for a new quota at the next step boundary;
                            {"command":"set_threads","threads":N} sets the OpenBLAS threads
                            at the next step boundary
  --device D                train on D (cpu, cuda, cuda:N) instead of the spec's memory.device
  --calibration-cache DIR   where memory calibrations are cached (default $SLIM_CACHE_DIR,
                            else ~/.cache/slim); plan takes it too
  SIGTERM or Ctrl-C: the current step finishes, a checkpoint is written, exit status 75.

data-parallel run flags (spec data_parallel.workers: N; one process per rank, all with the same
--spec and --out; docs/worker-protocol.md):
  --dist-rank R             this process's rank, 0..N-1; rank 0 writes checkpoints, the model
                            and the job's events
  --dist-world-size N       the number of ranks; must equal data_parallel.workers
  --dist-init URL           where the ranks meet: tcp://HOST:PORT (rank 0 listens on PORT) or
                            file://PATH (a path that does not exist yet, new for every launch)
  --dist-timeout S          seconds to wait for the other ranks when joining and in every
                            collective before failing (default 300)

plan flags, for a whole spec (what slimd runs at admission; prints the quota, min_quota_bytes,
feasible, chunk size, mode, predicted peak and step time):
  --spec FILE               job spec, as for run
  --default-quota-cap BYTES when the spec has no memory.quota, pick the default one: what
                            ordinary backprop (C = L) needs, at most BYTES
  --calibration-cache DIR   as for run
  --if-calibrated           do not calibrate: when the shape has no calibration on the
                            device kind yet, answer {"calibration_bytes": N, ...}, the most
                            calibrating can use (what slimd reserves for it)
  --device D                plan (and calibrate) on D instead of the spec's memory.device
  --memory-cap BYTES        cap this process's tensor memory on the device at BYTES
plan flags, for a shape:
  --preset NAME       model preset: tiny, mini, small, paper-iv (default small)
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

exit status: 0 done; 1 internal failure; 2 bad flags, spec, data or model file; 3 the quota cannot
fit the job (plan: JSON has min_quota_bytes) or memory ran out; 75 run stopped by a signal after
writing a checkpoint (run it again to resume)

examples:
  slim-train run --spec job.yaml --out runs/job1
  slim-train plan --preset small --seq-len 65536 --quota 512MiB --json
  slim-train devices --json
  slim-train init --preset tiny --out tiny.safetensors
  slim-train generate --model tiny.safetensors --prompt "Hello" --max-tokens 40 --seed 1
  slim-train eval --model tiny.safetensors --data README.md --seq-len 256
)";

// Set by SIGTERM/SIGINT; the trainer checks it after every optimizer step.
std::atomic<bool> g_stop_requested{false};
// Set by a `set_quota` control command (--control-stdin); applied at the next step boundary.
std::atomic<int64_t> g_requested_quota{0};
// Set by a `set_threads` control command; applied at the next step boundary.
std::atomic<int> g_requested_blas_threads{0};

// Reads control commands, one JSON object per line, from stdin until EOF:
//   {"command":"set_quota","quota_bytes":N}   shrink-to-fit (or grow) at the next step boundary
//   {"command":"set_threads","threads":N}      OpenBLAS threads from the next step boundary
// Anything else is reported on stderr and ignored.
void ReadControlCommands() {
  std::string line;
  while (std::getline(std::cin, line)) {
    try {
      const slim::ControlCommand command = slim::ControlFromJson(line);
      if (command.kind == slim::ControlCommand::Kind::kSetQuota) {
        g_requested_quota.store(command.quota_bytes);
      } else {
        g_requested_blas_threads.store(static_cast<int>(command.threads));
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "slim-train: ignoring control line '%s': %s\n", line.c_str(), e.what());
    }
  }
}

extern "C" void RequestStop(int signal_number) {
  g_stop_requested.store(true);
  std::signal(signal_number, SIG_DFL);  // a second signal ends the process at once
}

std::string FormatDuration(double seconds) {
  const long long s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", s / 3600, s / 60 % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", s / 60, s % 60);
  }
  return buf;
}

// The line people see: rewritten in place on a terminal, one line per report otherwise.
void PrintForPeople(const slim::TrainingEvent& e, bool terminal) {
  using slim::EventKind;
  const char* end_live = terminal ? "\r" : "\n";
  switch (e.kind) {
    case EventKind::kStarted:
      std::printf("%s on %s: chunk size %lld (%s), %lld steps", e.resumed_from_step >= 0 ? "resuming" : "training",
                  e.device.c_str(), static_cast<long long>(e.chunk_size), e.mode.c_str(),
                  static_cast<long long>(e.total_steps));
      if (e.world_size > 1) {
        std::printf(", rank %lld of %lld", static_cast<long long>(e.rank), static_cast<long long>(e.world_size));
      }
      if (e.resumed_from_step >= 0) std::printf(" from step %lld", static_cast<long long>(e.resumed_from_step));
      if (e.quota_bytes > 0) {
        std::printf(", predicted peak %s of quota %s", slim::FormatBytes(e.predicted_peak_bytes).c_str(),
                    slim::FormatBytes(e.quota_bytes).c_str());
      }
      std::printf("\n");
      break;
    case EventKind::kProgress:
      std::printf("step %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  ETA %s  mem %s%s%s",
                  static_cast<long long>(e.step), static_cast<long long>(e.total_steps), e.loss, e.lr,
                  e.tokens_per_second, FormatDuration(e.eta_seconds).c_str(), slim::FormatBytes(e.peak_bytes).c_str(),
                  terminal ? "\033[K" : "", end_live);
      break;
    case EventKind::kEval:
      std::printf("%sstep %lld: validation loss %.4f (%.3f bits per token)\n", terminal ? "\n" : "",
                  static_cast<long long>(e.step), e.eval_loss, e.eval_loss / std::log(2.0));
      break;
    case EventKind::kReplanned:
      std::printf("%snew quota %s: chunk size %lld (%s), predicted peak %s\n", terminal ? "\n" : "",
                  slim::FormatBytes(e.quota_bytes).c_str(), static_cast<long long>(e.chunk_size), e.mode.c_str(),
                  slim::FormatBytes(e.predicted_peak_bytes).c_str());
      break;
    case EventKind::kCheckpoint:
      if (terminal) std::printf("\n");
      std::printf("checkpoint %s\n", e.path.c_str());
      break;
    case EventKind::kWarning:
      std::fprintf(stderr, "%swarning: %s\n", terminal ? "\n" : "", e.message.c_str());
      break;
    case EventKind::kFinished:
      std::printf("%sdone: %s%s%s\n", terminal ? "\n" : "", e.path.c_str(), e.adapter_path.empty() ? "" : ", adapter ",
                  e.adapter_path.c_str());
      break;
    case EventKind::kStopped:
      std::printf("%sstopped at step %lld; resume with the same command (checkpoint %s)\n", terminal ? "\n" : "",
                  static_cast<long long>(e.step), e.path.c_str());
      break;
    case EventKind::kFailed:
      break;  // reported on stderr by main
  }
  std::fflush(stdout);
}

// The calibration cache: --calibration-cache DIR (slimd passes its own), else the default.
std::string CalibrationCache(const slim::tools::Flags& flags) {
  return flags.String("calibration-cache", slim::DefaultCalibrationCacheDir());
}

// A spec file (YAML or JSON) as a document; a file that does not parse is invalid_argument.
slim::Json ReadSpecDocument(const std::string& spec_path) {
  try {
    return slim::ParseStructuredFile(spec_path);
  } catch (const std::runtime_error& e) {
    throw slim::EngineError(slim::ErrorCode::kInvalidArgument, std::string("spec ") + e.what());
  }
}

// The model a spec trains: its base file's config, or its preset's.
slim::ModelConfig SpecModelConfig(const slim::JobSpec& spec) {
  return spec.base_model.empty() ? slim::PresetConfig(spec.preset) : slim::LoadModelFile(spec.base_model)->config();
}

int Run(const slim::tools::Flags& flags) {
  const std::string spec_path = flags.String("spec", "");
  const std::string out_dir = flags.String("out", "");
  const int64_t events_fd = flags.Int("events-fd", 0, 0);
  const double progress_interval = flags.Double("progress-interval", 1.0);
  const bool no_resume = flags.Bool("no-resume");
  const int64_t threads = flags.Int("threads", 0, 0);
  const int64_t blas_threads = flags.Int("blas-threads", 0, 0);
  const bool control_stdin = flags.Bool("control-stdin");
  const std::string device = flags.Has("device") ? flags.String("device", "") : "";
  const std::string calibration_cache = CalibrationCache(flags);
  slim::DataParallelOptions dist;
  dist.rank = static_cast<int>(flags.Int("dist-rank", 0, 0));
  dist.world_size = static_cast<int>(flags.Int("dist-world-size", 1, 1));
  if (flags.Has("dist-init")) dist.init_method = flags.String("dist-init", "");
  dist.timeout_seconds = flags.Double("dist-timeout", 300);
  flags.CheckAllUsed();
  slim::CheckArgument(progress_interval >= 0, "--progress-interval: must be >= 0");
  try {
    slim::ValidateDataParallelOptions(dist);
  } catch (const slim::EngineError& e) {
    throw slim::EngineError(e.code(), std::string("--") + e.what());
  }
  // Failures name the rank, so the logs of a group's processes can be told apart.
  const std::string who =
      dist.world_size > 1 ? " (rank " + std::to_string(dist.rank) + " of " + std::to_string(dist.world_size) + ")" : "";

  FILE* events = nullptr;
  if (events_fd > 0) {
    events = ::fdopen(static_cast<int>(events_fd), "w");
    slim::CheckArgument(events != nullptr, "--events-fd: " + std::to_string(events_fd) + " is not an open file descriptor");
  }
  auto send = [&](const slim::TrainingEvent& e) {
    if (events == nullptr) return;
    const std::string line = slim::EventToJson(e) + "\n";
    std::fwrite(line.data(), 1, line.size(), events);
    std::fflush(events);
  };
  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  // Reports a failure on every channel and returns the exit status.
  auto fail = [&](const std::string& code, const std::string& message, int status) {
    slim::TrainingEvent failed;
    failed.kind = slim::EventKind::kFailed;
    failed.code = code;
    failed.message = message;
    send(failed);
    if (terminal) std::printf("\n");
    std::fprintf(stderr, "slim-train%s: %s\n", who.c_str(), message.c_str());
    return status;
  };
  try {
    const slim::Json doc = ReadSpecDocument(spec_path);
    slim::JobSpec spec = slim::JobSpecFromJson(doc, std::filesystem::path(spec_path).parent_path().string());
    if (!device.empty()) spec.device = device;

    slim::InstallCpuMemoryTracker();
    slim::ConfigureRuntime(static_cast<int>(threads));
    if (blas_threads > 0) slim::SetBlasThreads(static_cast<int>(std::min<int64_t>(blas_threads, 4096)));
    std::signal(SIGTERM, RequestStop);
    std::signal(SIGINT, RequestStop);
    // Past a file-size limit (RLIMIT_FSIZE), writes fail with EFBIG and are reported like a
    // full disk, instead of the process being killed mid-checkpoint.
    std::signal(SIGXFSZ, SIG_IGN);

    slim::TrainerOptions options;
    options.out_dir = out_dir;
    options.stop_requested = &g_stop_requested;
    if (control_stdin) {
      std::thread(ReadControlCommands).detach();  // blocks on stdin; ends with the process
      options.requested_quota_bytes = &g_requested_quota;
      options.requested_blas_threads = &g_requested_blas_threads;
    }
    options.progress_interval_seconds = progress_interval;
    options.calibration_cache_dir = calibration_cache;
    options.token_cache_dir = calibration_cache.empty() ? "" : calibration_cache + "/tokens";
    options.resume = !no_resume;
    options.data_parallel = dist;
    options.on_event = [&](const slim::TrainingEvent& e) {
      send(e);
      PrintForPeople(e, terminal);
    };
    const slim::TrainingResult result = slim::RunTraining(spec, options);
    if (dist.rank > 0) {  // rank 0 reports the outcome through its events; the others say it here
      if (result.outcome == slim::TrainingOutcome::kStopped) {
        std::printf("stopped at step %lld with the group; rank 0 wrote the checkpoint %s\n",
                    static_cast<long long>(result.steps), result.checkpoint_path.c_str());
      } else {
        std::printf("done at step %lld; rank 0 wrote %s\n", static_cast<long long>(result.steps),
                    result.model_path.c_str());
      }
    }
    if (events != nullptr) std::fclose(events);
    return result.outcome == slim::TrainingOutcome::kStopped ? 75 : 0;
  } catch (const slim::EngineError& e) {
    return fail(slim::ErrorCodeName(e.code()), e.what(), slim::ExitStatus(e.code()));
  } catch (const c10::OutOfMemoryError& e) {
    // The memory cap (the job's quota) refused an allocation outside a training step (e.g. in
    // an evaluation or the optimizer): the same outcome as inside one.
    return fail(slim::ErrorCodeName(slim::ErrorCode::kResourceExhausted),
                std::string("out of memory: ") + e.what_without_backtrace(),
                slim::ExitStatus(slim::ErrorCode::kResourceExhausted));
  } catch (const std::exception& e) {
    return fail(slim::ErrorCodeName(slim::ErrorCode::kInternal), std::string("internal error: ") + e.what(),
                slim::ExitStatus(slim::ErrorCode::kInternal));
  }
}

int Merge(const slim::tools::Flags& flags) {
  const std::string base = flags.String("base", "");
  const std::string adapter = flags.String("adapter", "");
  const std::string out = flags.String("out", "");
  flags.CheckAllUsed();
  slim::PerformerLM model = slim::LoadModelFile(base);
  slim::LoadLoraAdapter(adapter, *model);
  slim::SaveModelFile(*model->MergedCopy(), out);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

// Puts a tokenizer file (tokenizer.json or tokenizer.model, or a directory holding one) into the
// model, to travel in its model file (docs/model-format.md, "Tokenizer"). Checked here once: it must
// parse and fit the model's vocabulary. Returns what it attached, for the command's summary line.
std::string AttachTokenizer(slim::PerformerLM& model, const std::string& path) {
  auto file = std::make_shared<slim::TokenizerFile>(slim::ReadTokenizerFile(path));
  model->set_tokenizer_file(file);
  const auto tokenizer = slim::ModelTokenizer(*model, path);
  return "tokenizer " + slim::TokenizerKindName(file->kind) + " (" + std::to_string(tokenizer->vocab_size()) + " ids)";
}

int ImportHf(const slim::tools::Flags& flags) {
  const std::string dir = flags.String("dir", "");
  const std::string out = flags.String("out", "");
  const slim::FeatureMap map = slim::ParseFeatureMap(flags.String("feature-map", "softmax"));
  const int64_t features = flags.Int("features", 64, 1);
  flags.CheckAllUsed();
  slim::PerformerLM model = slim::ImportHfCheckpoint(dir, map, features);
  const std::string tokenizer_note =
      slim::HasTokenizerFile(dir) ? AttachTokenizer(model, dir)
                                  : "no tokenizer (tokenizer.json / tokenizer.model not in the directory)";
  slim::SaveModelFile(*model, out);
  const slim::ModelConfig& c = model->config();
  std::printf("wrote %s: %lld parameters, %lld layers, d_model %lld, %lld heads (%lld key/value), vocab %lld, "
              "attention %s, %s\n",
              out.c_str(), static_cast<long long>(c.ParameterCount()), static_cast<long long>(c.n_layers),
              static_cast<long long>(c.d_model), static_cast<long long>(c.n_heads), static_cast<long long>(c.kv_heads()),
              static_cast<long long>(c.vocab_size), slim::FeatureMapName(c.feature_map).c_str(), tokenizer_note.c_str());
  return 0;
}

int Logits(const slim::tools::Flags& flags) {
  slim::PerformerLM model = slim::LoadModelFile(flags.String("model", ""));
  const std::string list = flags.String("tokens", "");
  flags.CheckAllUsed();
  std::vector<int64_t> ids;
  std::stringstream items(list);
  for (std::string item; std::getline(items, item, ',');) {
    char* end = nullptr;
    const long long id = std::strtoll(item.c_str(), &end, 10);
    slim::CheckArgument(!item.empty() && *end == '\0' && id >= 0 && id < model->config().vocab_size,
                        "tokens: '" + item + "' is not a token id in [0, " +
                            std::to_string(model->config().vocab_size) + ")");
    ids.push_back(id);
  }
  slim::CheckArgument(!ids.empty(), "tokens: at least one id is needed");
  at::NoGradGuard no_grad;
  const at::Tensor logits = model->Forward(at::tensor(ids, at::kLong).unsqueeze(0))[0].to(at::kDouble).contiguous();
  std::string json = "{\"tokens\": [";
  for (size_t i = 0; i < ids.size(); ++i) json += (i ? ", " : "") + std::to_string(ids[i]);
  json += "], \"logits\": [";
  char number[32];
  for (int64_t t = 0; t < logits.size(0); ++t) {
    json += t ? ", [" : "[";
    const double* row = logits[t].data_ptr<double>();
    for (int64_t v = 0; v < logits.size(1); ++v) {
      std::snprintf(number, sizeof(number), "%s%.9g", v ? ", " : "", row[v]);
      json += number;
    }
    json += "]";
  }
  std::printf("%s]}\n", json.c_str());
  return 0;
}

// plan --spec FILE: admission's answer for a whole spec (slimd runs this; docs/worker-protocol.md).
int PlanSpec(const slim::tools::Flags& flags) {
  const std::string spec_path = flags.String("spec", "");
  const int64_t default_cap = flags.Bytes("default-quota-cap", 0);
  const std::string cache = CalibrationCache(flags);
  const bool json = flags.Bool("json");
  // slimd plans in two steps so that a calibration runs inside a reservation: --if-calibrated
  // answers without measuring (calibration_bytes > 0 when a calibration is needed); then
  // --device and --memory-cap calibrate on the reserved device, capped at the reservation.
  const bool if_calibrated = flags.Bool("if-calibrated");
  const std::string device = flags.Has("device") ? flags.String("device", "") : "";
  const int64_t memory_cap = flags.Bytes("memory-cap", 0);
  flags.CheckAllUsed();
  // Without memory.quota the default policy picks one, at most --default-quota-cap (the
  // largest device of the kind): the spec is read with that cap as its quota.
  slim::SpecReading reading;
  reading.quota_from_policy = default_cap > 0;
  slim::JobSpec spec =
      slim::JobSpecFromJson(ReadSpecDocument(spec_path), std::filesystem::path(spec_path).parent_path().string(), reading);
  const bool default_quota = spec.quota_bytes == 0 && default_cap > 0;
  if (default_quota) spec.quota_bytes = default_cap;
  if (!device.empty()) spec.device = device;
  const slim::ModelConfig model = SpecModelConfig(spec);
  slim::InstallCpuMemoryTracker();
  slim::ConfigureRuntime();
  slim::AdmissionPlan plan;
  slim::CalibrationOptions calibration;
  calibration.cache_dir = cache;
  const slim::StepShape shape = slim::JobStepShape(spec, model);
  if (if_calibrated && !slim::CachedCalibration(shape, spec.device, calibration)) {
    plan.calibration_bytes = slim::CalibrationPeakBound(shape);
    if (!json) {
      std::printf("this shape has no calibration on %s yet; calibrating needs up to %s\n", spec.device.c_str(),
                  slim::FormatBytes(plan.calibration_bytes).c_str());
      return 0;
    }
  } else {
    if (memory_cap > 0) slim::CapDeviceMemory(spec.device, memory_cap);
    plan = slim::PlanAdmission(spec, model, cache, default_quota);
  }
  if (json) {
    std::printf("%s\n", slim::AdmissionPlanToJson(plan).c_str());
  } else if (plan.feasible) {
    std::printf("quota %s: chunk size %lld (%s), predicted peak %s, about %.3g s per step; minimum quota %s\n",
                slim::FormatBytes(plan.quota_bytes).c_str(), static_cast<long long>(plan.chunk_size),
                slim::StartStateModeName(plan.mode).c_str(), slim::FormatBytes(plan.predicted_peak_bytes).c_str(),
                plan.est_step_seconds, slim::FormatBytes(plan.min_quota_bytes).c_str());
  } else {
    std::printf("quota %s cannot fit this job; the minimum is %s (%lld bytes)\n", slim::FormatBytes(plan.quota_bytes).c_str(),
                slim::FormatBytes(plan.min_quota_bytes).c_str(), static_cast<long long>(plan.min_quota_bytes));
  }
  return 0;
}

int Plan(const slim::tools::Flags& flags) {
  if (flags.Has("spec")) return PlanSpec(flags);
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
  const std::string cache = CalibrationCache(flags);
  if (!flags.Bool("recalibrate")) options.cache_dir = cache;
  const slim::MemoryCoefficients k = slim::Calibrate(shape, device, options);
  const slim::PlanResult r = slim::PlanChunkSize(shape, quota, k, margin);
  if (!r.feasible) {
    if (json) {
      std::printf("{\"error\":\"quota %lld bytes is below the minimum for this job\",\"min_quota_bytes\":%lld}\n",
                  static_cast<long long>(quota), static_cast<long long>(r.min_quota_bytes));
    } else {
      std::fprintf(stderr, "slim-train: quota %s is too small for this job; the minimum is %s (%lld bytes)\n",
                   slim::FormatBytes(quota).c_str(), slim::FormatBytes(r.min_quota_bytes).c_str(),
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
                slim::FormatBytes(p.predicted_peak_bytes).c_str(), slim::FormatBytes(quota).c_str(),
                p.est_step_seconds);
  }
  return 0;
}

// export-hf --model FILE --out DIR
int ExportHf(const slim::tools::Flags& flags) {
  const std::string model_path = flags.String("model", "");
  const std::string out = flags.String("out", "");
  flags.CheckAllUsed();
  slim::ConfigureRuntime();
  slim::PerformerLM model = slim::LoadModelFile(model_path);
  slim::ExportHfCheckpoint(*model, out);
  std::printf("exported %s as a %s checkpoint to %s\n", model_path.c_str(),
              slim::HfConfigFor(model->config()).members.at("model_type").text.c_str(), out.c_str());
  return 0;
}

int Devices(const slim::tools::Flags& flags) {
  const bool json = flags.Bool("json");
  flags.CheckAllUsed();
  const std::vector<slim::DeviceInfo> devices = slim::DiscoverDevices();
  if (json) {
    std::printf("%s\n", slim::DevicesToJson(devices).c_str());
    return 0;
  }
  for (const slim::DeviceInfo& d : devices) {
    std::printf("%-8s %-30s total %-10s free %s\n", d.name.c_str(), d.description.c_str(),
                slim::FormatBytes(d.total_bytes).c_str(), slim::FormatBytes(d.free_bytes).c_str());
  }
  return 0;
}

int BuildInfo(const slim::tools::Flags& flags) {
  flags.CheckAllUsed();
  std::string backends;
  for (const std::string& b : slim::DataParallelBackends()) backends += (backends.empty() ? "\"" : ",\"") + b + "\"";
  std::printf("{\"libtorch\":\"%s\",\"cxx_standard\":%ld,\"cuda_build\":%s,\"cuda_devices\":%d,"
              "\"data_parallel_backends\":[%s]}\n",
              TORCH_VERSION, static_cast<long>(__cplusplus), slim::CudaBuild() ? "true" : "false",
              slim::CudaAvailable() ? static_cast<int>(torch::cuda::device_count()) : 0, backends.c_str());
  return 0;
}

// footprint --device D [--json]: what a worker process on D uses beyond its tensors
// (engine/devices.h); slimd counts it beside each worker's quota.
int Footprint(const slim::tools::Flags& flags) {
  const std::string device = flags.String("device", "cpu");
  const bool json = flags.Bool("json");
  flags.CheckAllUsed();
  slim::ConfigureRuntime();
  const slim::WorkerFootprint footprint = slim::MeasureWorkerFootprint(device);
  if (json) {
    std::printf("%s\n", slim::WorkerFootprintToJson(footprint).c_str());
  } else {
    std::printf("%s: %s (%s)\n", device.c_str(), slim::FormatBytes(footprint.bytes).c_str(), footprint.method.c_str());
  }
  return 0;
}

// inspect --model FILE: loads the whole file (every tensor checked against its config).
int Inspect(const slim::tools::Flags& flags) {
  const std::string path = flags.String("model", "");
  const bool json = flags.Bool("json");
  flags.CheckAllUsed();
  slim::ConfigureRuntime();
  const slim::PerformerLM model = slim::LoadModelFile(path);
  slim::ModelSummary summary;
  for (const auto& [k, v] : slim::ModelConfigMetadata(model->config())) {
    if (k != "format" && k != "format_version") summary.config[k] = v;
  }
  if (model->tokenizer_file()) summary.config["tokenizer"] = slim::TokenizerKindName(model->tokenizer_file()->kind);
  summary.parameters = model->config().ParameterCount();
  if (json) {
    std::printf("%s\n", slim::ModelSummaryToJson(summary).c_str());
  } else {
    std::printf("%s: %lld parameters\n", path.c_str(), static_cast<long long>(summary.parameters));
    for (const auto& [k, v] : summary.config) std::printf("  %-16s %s\n", k.c_str(), v.c_str());
  }
  return 0;
}

int Init(const slim::tools::Flags& flags) {
  // A preset, or the architecture of a Hugging Face config.json (e.g. a GPT-2 layout to
  // pre-train in softmax mode and export with export-hf).
  const slim::ModelConfig config =
      flags.Has("hf-config")
          ? slim::ModelConfigFor(slim::ReadHfConfigFile(flags.String("hf-config", "")),
                                 slim::ParseFeatureMap(flags.Has("feature-map") ? flags.String("feature-map", "") : "softmax"),
                                 flags.Int("features", 64, 2))
          : slim::PresetConfig(flags.String("preset", "small"));
  const std::string out = flags.String("out", "");
  const uint64_t seed = static_cast<uint64_t>(flags.Int("seed", 0, 0));
  const std::string tokenizer_path = flags.Has("tokenizer") ? flags.String("tokenizer", "") : "";
  flags.CheckAllUsed();
  slim::PerformerLM model(config, seed);
  const std::string tokenizer_note = tokenizer_path.empty() ? "no tokenizer" : AttachTokenizer(model, tokenizer_path);
  slim::SaveModelFile(*model, out);
  std::printf("wrote %s (%lld parameters, %s)\n", out.c_str(), static_cast<long long>(config.ParameterCount()),
              tokenizer_note.c_str());
  return 0;
}

int Generate(const slim::tools::Flags& flags) {
  // --device and --memory-cap: where to sample, and a hard cap on this process's tensor memory
  // there (the model included; slimd passes the reservation it made for the generation).
  const std::string device = flags.String("device", "cpu");
  const int64_t memory_cap = flags.Bytes("memory-cap", 0);
  slim::InstallCpuMemoryTracker();
  slim::ConfigureRuntime();
  if (memory_cap > 0) slim::CapDeviceMemory(device, memory_cap);
  slim::PerformerLM model = slim::LoadModelFile(flags.String("model", ""));
  model->to(slim::ParseDevice(device));
  std::string prompt = flags.Has("prompt") ? flags.String("prompt", "") : "";
  const std::string prompt_file = flags.Has("prompt-file") ? flags.String("prompt-file", "") : "";
  // --ids: only the generated token ids, one per line, flushed as each is drawn (slimd streams
  // them to its client); otherwise the prompt and its continuation as text.
  const bool ids_only = flags.Bool("ids");
  // --with-bytes (with --ids): "ID HEX" per token, HEX the bytes the token adds to the text
  // ("-": none yet), and a last line "end HEX" with bytes held back until the end; slimd
  // streams text from these without a tokenizer of its own.
  const bool with_bytes = flags.Bool("with-bytes");
  slim::SamplingOptions o;
  o.max_new_tokens = flags.Int("max-tokens", 64, 0);
  o.temperature = flags.Double("temperature", 1.0);
  o.top_k = flags.Int("top-k", 0, 0);
  o.seed = static_cast<uint64_t>(flags.Int("seed", 0, 0));
  flags.CheckAllUsed();
  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file, std::ios::binary);
    if (!in) throw slim::EngineError(slim::ErrorCode::kInvalidArgument, "prompt-file: cannot read " + prompt_file);
    prompt.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  slim::CheckArgument(!prompt.empty(), "prompt: must not be empty");
  // Text goes through the model's tokenizer (docs/model-format.md, "Tokenizer"); a tokenizer
  // with a BOS token gets it before the prompt, as the Hugging Face libraries do by default for
  // those families. Models without one read and write bytes (an id ≥ 256 prints as '?').
  const bool has_tokenizer = model->tokenizer_file() != nullptr;
  const std::unique_ptr<slim::Tokenizer> tokenizer = slim::ModelTokenizer(*model, "model");
  std::vector<int32_t> ids;
  if (tokenizer->bos_id() >= 0) ids.push_back(tokenizer->bos_id());
  const std::vector<int32_t> prompt_ids = tokenizer->Encode(prompt);
  ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  if (!ids_only) std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  // The bytes each new token adds to the text. With a tokenizer they come from decoding
  // everything so far: a token's bytes can depend on its neighbours (SentencePiece drops the
  // space of a text's first piece) or complete a character an earlier token began, which
  // SentencePiece decodes as U+FFFD until then — so a trailing U+FFFD is held back until the
  // next token or the end.
  std::vector<int32_t> all = ids;
  size_t done = has_tokenizer ? tokenizer->Decode(ids).size() : 0;
  // A model may have more ids than its tokenizer has tokens (padded vocabularies); such an id
  // stands for no text, as the Hugging Face decoders skip it.
  std::map<int32_t, bool> decodable;
  auto has_text = [&](int32_t t) {
    const auto [it, added] = decodable.emplace(t, true);
    if (added) {
      try {
        tokenizer->Decode({t});
      } catch (const slim::EngineError&) {
        it->second = false;
      }
    }
    return it->second;
  };
  auto new_bytes = [&](int32_t t, bool final) -> std::string {
    if (!has_tokenizer) return final ? "" : std::string(1, static_cast<char>(t < 256 ? t : '?'));
    if (!final && has_text(t)) all.push_back(t);
    const std::string text = tokenizer->Decode(all);
    size_t end = text.size();
    if (!final && end >= 3 && text.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) end -= 3;
    std::string piece = end > done ? text.substr(done, end - done) : "";
    done = std::max(done, end);
    return piece;
  };
  auto hex = [](const std::string& bytes) {
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
    return out.empty() ? std::string("-") : out;
  };
  slim::GenerateTokens(*model, ids, o, [&](int32_t t) {
    if (ids_only && !with_bytes) {
      std::printf("%d\n", t);
    } else if (ids_only) {
      std::printf("%d %s\n", t, hex(new_bytes(t, false)).c_str());
    } else {
      const std::string piece = new_bytes(t, false);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    }
    std::fflush(stdout);
  });
  const std::string rest = new_bytes(0, true);
  if (ids_only && with_bytes && !rest.empty()) std::printf("end %s\n", hex(rest).c_str());
  if (!ids_only) {
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

int Eval(const slim::tools::Flags& flags) {
  slim::ConfigureRuntime();
  slim::PerformerLM model = slim::LoadModelFile(flags.String("model", ""));
  slim::DataSource source;
  source.path = flags.String("data", "");
  source.format = slim::ParseDataFormat(flags.String("format", "text"), "--format");
  const int64_t L = flags.Int("seq-len", -1, 1);
  const int64_t C = flags.Int("chunk", L, 1);
  const int64_t batch = flags.Int("batch", 8, 1);
  flags.CheckAllUsed();
  // Text through the model's tokenizer (or as bytes); ids files as they are.
  const std::vector<int32_t> tokens = slim::ReadModelTokens(source, *model, "");
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
  const double nats = loss * static_cast<double>(n * L);
  // Bits per byte: total nats / ln 2 / the bytes of the text the targets spell (tokens 1 .. n·L,
  // contiguous). A token may stand for several bytes (or, with ids files, none we know of), so
  // the bytes come from the decoding: bytes(tokens 0 .. n·L) − bytes(token 0), which is exact
  // where a decoder treats the text's first token specially (SentencePiece's leading space).
  double bytes = static_cast<double>(n * L);
  bool bytes_known = true;
  if (source.format == slim::DataFormat::kText || source.format == slim::DataFormat::kJsonl) {
    const auto tokenizer = slim::ModelTokenizer(*model, "model");
    const std::vector<int32_t> covered(tokens.begin(), tokens.begin() + n * L + 1);
    bytes = static_cast<double>(tokenizer->Decode(covered).size() - tokenizer->Decode({tokens[0]}).size());
  } else if (model->tokenizer_file()) {
    bytes_known = false;  // ids of a tokenizer: their text is not at hand
  }
  if (bytes_known && bytes > 0) {
    std::printf("{\"loss\":%.6f,\"bits_per_byte\":%.6f,\"tokens\":%lld,\"bytes\":%lld,\"sequences\":%lld}\n", loss,
                nats / std::log(2.0) / bytes, static_cast<long long>(n * L), static_cast<long long>(bytes),
                static_cast<long long>(n));
  } else {
    std::printf("{\"loss\":%.6f,\"tokens\":%lld,\"sequences\":%lld}\n", loss, static_cast<long long>(n * L),
                static_cast<long long>(n));
  }
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
    if (command == "run") return Run(flags);
    if (command == "merge") return Merge(flags);
    if (command == "plan") return Plan(flags);
    if (command == "devices") return Devices(flags);
    if (command == "footprint") return Footprint(flags);
    if (command == "build-info") return BuildInfo(flags);
    if (command == "inspect") return Inspect(flags);
    if (command == "init") return Init(flags);
    if (command == "generate") return Generate(flags);
    if (command == "eval") return Eval(flags);
    if (command == "import-hf") return ImportHf(flags);
    if (command == "logits") return Logits(flags);
    if (command == "export-hf") return ExportHf(flags);
    throw slim::EngineError(slim::ErrorCode::kInvalidArgument, "unknown command '" + command + "'");
  } catch (const slim::EngineError& e) {
    std::cerr << "slim-train: " << e.what() << "\n";
    if (e.code() == slim::ErrorCode::kInvalidArgument) std::cerr << "run 'slim-train --help' for usage\n";
    return slim::ExitStatus(e.code());
  }  catch (const c10::OutOfMemoryError& e) {
    // A memory cap (--memory-cap, or a plan's probe on a full device) refused an allocation
    // outside a training step, which reports its own.
    std::cerr << "slim-train: out of memory: " << e.what_without_backtrace() << "\n";
    return slim::ExitStatus(slim::ErrorCode::kResourceExhausted);
  }
}
