#include "server/supervise/engine_commands.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/errors.h"
#include "base/json.h"
#include "server/supervise/worker_process.h"

namespace slim::server {

namespace fs = std::filesystem;

namespace {

// slim-train's last "slim-train: ..." line on stderr, without the prefix.
std::string CommandMessage(const std::string& stderr_tail) {
  std::string message;
  for (absl::string_view line : absl::StrSplit(stderr_tail, '\n')) {
    if (absl::StartsWith(line, "slim-train: ")) message = std::string(line.substr(12));
  }
  return message;
}

absl::Status FailedCommand(const std::string& what, const WorkerExit& exit) {
  if (exit.signaled) return absl::InternalError(absl::StrCat("slim-train ", what, " was killed by signal ", exit.signal));
  std::string message = CommandMessage(exit.stderr_tail);
  if (message.empty()) message = absl::StrCat("slim-train ", what, " exited with status ", exit.exit_status);
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (info.exit_status == exit.exit_status) return absl::Status(static_cast<absl::StatusCode>(info.grpc_code), message);
  }
  return absl::InternalError(message);
}

// A double as a decimal that reads back to the same value.
std::string ExactDecimal(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

// Writes `text` to `path` (a new scratch file).
absl::Status WriteScratch(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

// Removes a scratch file when it goes out of scope.
struct ScratchFile {
  std::string path;
  ~ScratchFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

// What the plan depends on besides the calibrations: the model (its file, or preset), the
// step's shape, the quota or its default policy, a fixed chunk size or mode, and the device.
std::string PlanKey(const JobSpec& s, int64_t default_quota_cap) {
  return absl::StrCat(s.base_model, "|", s.preset, "|L", s.seq_len, "|B", s.batch_size, "|W", s.workers, "|",
                      PrecisionName(s.precision), "|", OptimizerName(s.optimizer), "|", TuningModeName(s.tuning), "|r",
                      s.lora_rank, "|q", s.quota_bytes, "|cap", default_quota_cap, "|C", s.chunk_size, "|",
                      s.mode ? StartStateModeName(*s.mode) : "auto", "|", s.device);
}

// The calibrations' state: the files of the cache directory with their sizes and modification
// times. A plan answer is reused only while it is unchanged (a recalibration, or a cache file
// replaced or removed, plans anew).
std::string CalibrationState(const std::string& dir) {
  std::string state;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code e;
    const auto size = fs::file_size(it->path(), e);
    const auto time = fs::last_write_time(it->path(), e).time_since_epoch().count();
    absl::StrAppend(&state, it->path().filename().string(), ":", e ? 0 : size, ":", e ? 0 : time, ";");
  }
  return state;
}

}  // namespace

EngineCommands::EngineCommands(EngineCommandsOptions options) : options_(std::move(options)) {
  std::error_code ec;
  fs::create_directories(options_.scratch_dir, ec);  // a failure shows when a file is written there
}

std::string EngineCommands::ScratchPath(const std::string& stem, const std::string& extension) {
  int64_t n;
  {
    absl::MutexLock lock(&mu_);
    n = ++scratch_counter_;
  }
  return (fs::path(options_.scratch_dir) / absl::StrCat(stem, "-", getpid(), "-", n, extension)).string();
}

absl::Status EngineCommands::Run(const std::string& what, const std::vector<std::string>& args,
                                 const std::function<bool(const std::string&)>& on_line,
                                 const std::function<bool()>& cancelled) {
  ScratchFile log{ScratchPath(what, ".log")};
  absl::Mutex mu;
  bool stop = false, done = false;
  WorkerExit result;
  WorkerOptions o;
  o.argv.push_back(options_.slim_train);
  o.argv.push_back(what);
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.log_path = log.path;
  o.on_stdout_line = [&](const std::string& line) {
    absl::MutexLock lock(&mu);
    if (!stop && !on_line(line)) stop = true;
  };
  o.on_exit = [&](const WorkerExit& e) {
    absl::MutexLock lock(&mu);
    result = e;
    done = true;
  };
  absl::StatusOr<std::unique_ptr<WorkerProcess>> process = WorkerProcess::Start(std::move(o));
  if (!process.ok()) return process.status();
  bool timed_out = false, stopped = false;
  {
    const absl::Time deadline = absl::Now() + options_.timeout;
    absl::MutexLock lock(&mu);
    const auto settled = [&] { return stop || done; };
    while (!mu.AwaitWithTimeout(absl::Condition(&settled), std::min(absl::Milliseconds(100), deadline - absl::Now()))) {
      if (cancelled && cancelled()) {
        stop = true;
        break;
      }
      if (absl::Now() >= deadline) {
        timed_out = true;
        break;
      }
    }
    stopped = stop && !done;
  }
  if (timed_out || stopped) (*process)->Kill();
  (*process)->WaitForExit();
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat("slim-train ", what, " did not finish in ", absl::FormatDuration(options_.timeout)));
  }
  if (stopped) return absl::CancelledError(absl::StrCat("slim-train ", what, " stopped: its output was not wanted"));
  absl::MutexLock lock(&mu);
  if (result.signaled || result.exit_status != 0) return FailedCommand(what, result);
  return absl::OkStatus();
}

absl::StatusOr<std::string> EngineCommands::Answer(const std::string& what, const std::vector<std::string>& args) {
  std::string last;
  const absl::Status status = Run(what, args, [&](const std::string& line) {
    if (!line.empty()) last = line;
    return true;
  });
  if (!status.ok()) return status;
  if (last.empty()) return absl::InternalError("slim-train " + what + " printed no answer");
  return last;
}

absl::StatusOr<AdmissionPlan> EngineCommands::Plan(const JobSpec& spec, int64_t default_quota_cap,
                                                   const CalibrationPlace* calibrate_on) {
  const std::string inputs = PlanKey(spec, default_quota_cap);
  {
    absl::MutexLock lock(&mu_);
    const auto it = plans_.find(inputs + "|" + CalibrationState(options_.calibration_cache));
    if (it != plans_.end()) return it->second;
    ++plan_processes_;
  }
  ScratchFile spec_file{ScratchPath("plan", ".json")};
  if (absl::Status s = WriteScratch(spec_file.path, SerializeJson(JobSpecToJson(spec)) + "\n"); !s.ok()) return s;
  std::vector<std::string> args{"--spec", spec_file.path, "--json"};
  if (!options_.calibration_cache.empty()) {
    args.push_back("--calibration-cache");
    args.push_back(options_.calibration_cache);
  }
  if (spec.quota_bytes == 0) {
    args.push_back("--default-quota-cap");
    args.push_back(std::to_string(default_quota_cap));
  }
  if (calibrate_on == nullptr) {
    args.push_back("--if-calibrated");
  } else {
    args.insert(args.end(), {"--device", calibrate_on->device, "--memory-cap", std::to_string(calibrate_on->memory_cap)});
  }
  absl::StatusOr<std::string> line = Answer("plan", args);
  if (!line.ok()) return line.status();
  AdmissionPlan plan;
  try {
    plan = AdmissionPlanFromJson(*line);
  } catch (const EngineError& e) {
    return absl::InternalError(e.what());
  }
  if (plan.calibration_bytes > 0) return plan;  // not a plan: a request for a reservation
  // Stored under the calibrations as they are after the run (a cold plan has just written one).
  absl::MutexLock lock(&mu_);
  if (plans_.size() >= 4096) plans_.clear();  // stale states accumulate; start over rather than grow
  plans_[inputs + "|" + CalibrationState(options_.calibration_cache)] = plan;
  return plan;
}

absl::StatusOr<ModelSummary> EngineCommands::Inspect(const std::string& model_path) {
  absl::StatusOr<std::string> line = Answer("inspect", {"--model", model_path, "--json"});
  if (!line.ok()) return line.status();
  try {
    return ModelSummaryFromJson(*line);
  } catch (const EngineError& e) {
    return absl::InternalError(e.what());
  }
}

absl::Status EngineCommands::ImportHf(const std::string& dir, const std::string& out, const std::string& feature_map,
                                      int64_t features) {
  return Answer("import-hf", {"--dir", dir, "--out", out, "--feature-map", feature_map, "--features",
                              std::to_string(features)})
      .status();
}

absl::StatusOr<std::vector<DeviceInfo>> EngineCommands::Devices() {
  absl::StatusOr<std::string> line = Answer("devices", {"--json"});
  if (!line.ok()) return line.status();
  try {
    return DevicesFromJson(*line);
  } catch (const EngineError& e) {
    return absl::InternalError(e.what());
  }
}

absl::StatusOr<WorkerFootprint> EngineCommands::Footprint(const std::string& device) {
  absl::StatusOr<std::string> line = Answer("footprint", {"--device", device, "--json"});
  if (!line.ok()) return line.status();
  try {
    return WorkerFootprintFromJson(*line);
  } catch (const EngineError& e) {
    return absl::InternalError(e.what());
  }
}

absl::Status EngineCommands::Generate(const std::string& model_path, const std::string& prompt,
                                      const GenerateParams& params, const std::function<bool(const std::string&)>& emit) {
  ScratchFile prompt_file{ScratchPath("prompt", ".txt")};
  if (absl::Status s = WriteScratch(prompt_file.path, prompt); !s.ok()) return s;
  bool malformed = false;
  // "ID HEX" per token and a last "end HEX" (--with-bytes): the worker decodes with the model's
  // tokenizer, so slimd needs none.
  auto bytes_of = [](absl::string_view hex, std::string* out) {
    if (hex == "-") return true;
    if (hex.size() % 2 != 0) return false;
    for (size_t i = 0; i < hex.size(); i += 2) {
      int value = 0;
      for (size_t k = i; k < i + 2; ++k) {
        const char c = hex[k];
        const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (digit < 0) return false;
        value = value * 16 + digit;
      }
      out->push_back(static_cast<char>(value));
    }
    return true;
  };
  const absl::Status status = Run(
      "generate",
      {"--model", model_path, "--prompt-file", prompt_file.path, "--ids", "--with-bytes", "--max-tokens",
       std::to_string(params.max_tokens), "--temperature", ExactDecimal(params.temperature), "--top-k",
       std::to_string(params.top_k), "--seed", std::to_string(params.seed), "--device", params.device,
       "--memory-cap", std::to_string(params.memory_cap)},
      [&](const std::string& line) {
        const std::vector<absl::string_view> fields = absl::StrSplit(line, ' ');
        int32_t id = 0;
        std::string bytes;
        if (fields.size() != 2 || (fields[0] != "end" && (!absl::SimpleAtoi(fields[0], &id) || id < 0)) ||
            !bytes_of(fields[1], &bytes)) {
          malformed = true;
          return false;
        }
        return bytes.empty() || emit(bytes);
      },
      params.cancelled);
  if (malformed) return absl::InternalError("slim-train generate printed something other than \"ID HEX\" lines");
  return status;
}

int64_t EngineCommands::plan_processes() const {
  absl::MutexLock lock(&mu_);
  return plan_processes_;
}

}  // namespace slim::server
