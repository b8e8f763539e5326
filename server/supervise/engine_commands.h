// slim-train's one-shot commands, run as subprocesses so that slimd links no LibTorch and holds
// no device memory of its own (docs/service.md, "Tensor work runs in subprocesses"):
//   plan --spec FILE --json   admission's plan, by the planner the worker trains with
//   inspect --model FILE      a model file loaded whole before it is imported or registered
//   import-hf --dir DIR       a Hugging Face checkpoint directory converted to a model file
//   devices --json            the devices this machine has
//   footprint --device D      what a worker process on D uses beyond its quota
//   generate --ids            sampling from a model, one token id per line as it is drawn
// Answers are parsed by base/command_answers.h. A command that fails maps its exit status
// through the error-code table (base/errors.h) and reports slim-train's own message.
//
// Thread-safety: all methods may be called from any thread, concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/command_answers.h"
#include "base/job_spec.h"

namespace slim::server {

struct EngineCommandsOptions {
  std::string slim_train;         // path of the slim-train binary
  std::string calibration_cache;  // --calibration-cache for plan (the runner passes it to run)
  std::string scratch_dir;        // temporary files: specs, prompts, the commands' logs
  absl::Duration timeout = absl::Minutes(10);  // a command still running then is killed
};

struct GenerateParams {
  int64_t max_tokens = 64;
  double temperature = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  std::string device = "cpu";  // as slim-train names it: "cpu", "cuda:N"
  int64_t memory_cap = 0;      // the process's tensor memory cap there (0: none)
  // Polled about every 100 ms while the process runs; true kills it (CANCELLED).
  std::function<bool()> cancelled;
};

class EngineCommands {
 public:
  explicit EngineCommands(EngineCommandsOptions options);

  // Admission's plan for `spec` (its quota_bytes 0: the default policy, capped at
  // `default_quota_cap`). Answers are cached by the plan's inputs (model, shape, precision,
  // optimizer, tuning, quota, chunk size, mode, device) and the calibration files they came
  // from (names, sizes, times), so a repeated plan starts no process.
  //
  // Without `calibrate_on`, a shape that has no calibration on its device kind yet is not
  // calibrated: the answer has calibration_bytes > 0 and no plan. The caller reserves that
  // much of a device and asks again with it; the calibration then runs there, its memory
  // capped at the reservation (docs/service.md, "Calibration").
  struct CalibrationPlace {
    std::string device;     // as slim-train names it: "cpu", "cuda:N"
    int64_t memory_cap = 0;  // the reservation
  };
  absl::StatusOr<AdmissionPlan> Plan(const JobSpec& spec, int64_t default_quota_cap,
                                     const CalibrationPlace* calibrate_on = nullptr);
  absl::StatusOr<ModelSummary> Inspect(const std::string& model_path);
  // Converts the checkpoint directory `dir` into the model file `out` with attention
  // `feature_map` ("softmax" or a Performer feature map) and `features` favor+ features per head.
  absl::Status ImportHf(const std::string& dir, const std::string& out, const std::string& feature_map,
                        int64_t features);
  absl::StatusOr<std::vector<DeviceInfo>> Devices();
  // `device` as slim-train names it: "cpu", "cuda:N".
  absl::StatusOr<WorkerFootprint> Footprint(const std::string& device);
  // Streams each new token id to `emit` as it is drawn; `emit` returning false kills the
  // process and returns CANCELLED.
  absl::Status Generate(const std::string& model_path, const std::string& prompt, const GenerateParams& params,
                        const std::function<bool(const std::string&)>& emit);

  // How many plan processes have run (cache misses).
  int64_t plan_processes() const;

 private:
  // Runs slim-train with `args`; each stdout line goes to `on_line` (false stops the process:
  // CANCELLED). `what` names the command in errors.
  // `cancelled` (optional) is polled about every 100 ms; true kills the process (CANCELLED).
  absl::Status Run(const std::string& what, const std::vector<std::string>& args,
                   const std::function<bool(const std::string&)>& on_line,
                   const std::function<bool()>& cancelled = nullptr);
  // Runs a command whose answer is its last stdout line.
  absl::StatusOr<std::string> Answer(const std::string& what, const std::vector<std::string>& args);
  std::string ScratchPath(const std::string& stem, const std::string& extension);

  const EngineCommandsOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, AdmissionPlan> plans_ ABSL_GUARDED_BY(mu_);
  int64_t plan_processes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t scratch_counter_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace slim::server
