// The worker protocol: what `slim-train run` reports about a training run, one JSON object per
// line (docs/worker-protocol.md). The server reads these from the worker's pipe; people and
// scripts can read them from a file. Plain C++ with no gRPC or protobuf, so the worker builds on
// machines that have only LibTorch.
#pragma once

#include <cstdint>
#include <string>

namespace slim {

enum class EventKind {
  kStarted,     // the plan is fixed: device, quota, chunk size, mode, predicted peak
  kProgress,    // after an optimizer step (rate-limited by the worker)
  kEval,        // validation loss
  kCheckpoint,  // a checkpoint file was written
  kReplanned,   // a new quota took effect at a step boundary: chunk size, mode, predicted peak
  kWarning,     // something the operator should know; training continues
  kFinished,    // outputs written; the worker exits 0
  kStopped,     // asked to stop (SIGTERM): checkpoint written, resumable; exits 75
  kFailed,      // the run cannot continue; `code` and `message` say why
};
std::string EventKindName(EventKind k);

// Fields not used by an event's kind keep their defaults and are not written.
struct TrainingEvent {
  EventKind kind = EventKind::kProgress;
  double time = 0;          // Unix seconds when the event was made
  int64_t step = 0;         // optimizer steps completed
  int64_t total_steps = 0;
  // started, replanned
  std::string device;
  int64_t quota_bytes = 0;
  int64_t chunk_size = 0;
  std::string mode;         // "subtract" or "boundaries"
  int64_t predicted_peak_bytes = 0;
  int64_t resumed_from_step = -1;  // -1: a fresh start
  // started: this worker's place in its data-parallel group (0 of 1 without one)
  int64_t rank = 0;
  int64_t world_size = 1;
  // progress
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0;        // training tokens consumed so far
  double tokens_per_second = 0;
  double eta_seconds = 0;
  int64_t peak_bytes = 0;    // observed peak of tensor memory on the device
  int64_t current_bytes = 0; // tensor memory in use at the report
  double step_seconds = 0;   // duration of the last optimizer step
  int64_t blas_threads = 0;  // the BLAS library's threads now (0: not OpenBLAS, not known)
  // eval
  double eval_loss = 0;
  // checkpoint, finished (the output model), stopped (the checkpoint)
  std::string path;
  std::string adapter_path;  // finished, LoRA runs
  // warning, failed: code is an ErrorCodeName (base/errors.h)
  std::string code, message;
};

// One line of JSON without the newline: {"event":"progress","step":12,...}.
std::string EventToJson(const TrainingEvent& event);
// Reads a line written by EventToJson. Throws EngineError(kInvalidArgument) for a malformed line:
// not a JSON object, an unknown event, a field of the wrong type, a count that is not an integer
// in the int64 range.
TrainingEvent EventFromJson(const std::string& line);

// What slimd asks of a running worker, one JSON object per line on its stdin
// (slim-train run --control-stdin); applied at the worker's next step boundary.
struct ControlCommand {
  enum class Kind {
    kSetQuota,    // {"command":"set_quota","quota_bytes":N}: re-plan for quota N (> 0)
    kSetThreads,  // {"command":"set_threads","threads":N}: OpenBLAS threads, 1..4096
  };
  Kind kind = Kind::kSetQuota;
  int64_t quota_bytes = 0;
  int64_t threads = 0;
};
std::string ControlToJson(const ControlCommand& command);
// Throws EngineError(kInvalidArgument) naming what is wrong: not a JSON object, an unknown
// command, a missing or out-of-range argument.
ControlCommand ControlFromJson(const std::string& line);

}  // namespace slim
