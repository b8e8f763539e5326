#include "base/worker_events.h"

#include <cmath>

#include "base/errors.h"
#include "base/json.h"

namespace slim {
namespace {

constexpr EventKind kKinds[] = {EventKind::kStarted, EventKind::kProgress, EventKind::kEval,
                                EventKind::kCheckpoint, EventKind::kReplanned, EventKind::kWarning, EventKind::kFinished,
                                EventKind::kStopped, EventKind::kFailed};


[[noreturn]] void Bad(const std::string& message) {
  throw EngineError(ErrorCode::kInvalidArgument, message);
}

double NumberOr(const Json& o, const char* key, double fallback) {
  const auto it = o.members.find(key);
  if (it == o.members.end()) return fallback;
  if (it->second.kind != Json::kNumber) Bad(std::string("event field '") + key + "' is not a number");
  return it->second.number;
}
// Counts and byte sizes: whole numbers that fit int64 (converting any other double is undefined
// behaviour). The bound is 2^63, exactly representable as a double.
int64_t IntOr(const Json& o, const char* key, int64_t fallback) {
  const double v = NumberOr(o, key, static_cast<double>(fallback));
  if (v != std::floor(v) || v < -9223372036854775808.0 || v >= 9223372036854775808.0) {
    Bad(std::string("event field '") + key + "' is not an integer in the int64 range");
  }
  return static_cast<int64_t>(v);
}
std::string StringOr(const Json& o, const char* key) {
  const auto it = o.members.find(key);
  if (it == o.members.end()) return "";
  if (it->second.kind != Json::kString) Bad(std::string("event field '") + key + "' is not a string");
  return it->second.text;
}

}  // namespace

std::string EventKindName(EventKind k) {
  switch (k) {
    case EventKind::kStarted: return "started";
    case EventKind::kProgress: return "progress";
    case EventKind::kEval: return "eval";
    case EventKind::kCheckpoint: return "checkpoint";
    case EventKind::kReplanned: return "replanned";
    case EventKind::kWarning: return "warning";
    case EventKind::kFinished: return "finished";
    case EventKind::kStopped: return "stopped";
    case EventKind::kFailed: return "failed";
  }
  return "?";
}

std::string EventToJson(const TrainingEvent& e) {
  Json o;
  o.kind = Json::kObject;
  auto& m = o.members;
  m["event"] = JsonString(EventKindName(e.kind));
  m["time"] = JsonNumber(e.time);
  m["step"] = JsonNumber(static_cast<double>(e.step));
  m["total_steps"] = JsonNumber(static_cast<double>(e.total_steps));
  switch (e.kind) {
    case EventKind::kStarted:
    case EventKind::kReplanned:
      m["device"] = JsonString(e.device);
      m["quota_bytes"] = JsonNumber(static_cast<double>(e.quota_bytes));
      m["chunk_size"] = JsonNumber(static_cast<double>(e.chunk_size));
      m["mode"] = JsonString(e.mode);
      m["predicted_peak_bytes"] = JsonNumber(static_cast<double>(e.predicted_peak_bytes));
      m["resumed_from_step"] = JsonNumber(static_cast<double>(e.resumed_from_step));
      if (e.kind == EventKind::kStarted) {
        m["rank"] = JsonNumber(static_cast<double>(e.rank));
        m["world_size"] = JsonNumber(static_cast<double>(e.world_size));
      }
      break;
    case EventKind::kProgress:
      m["loss"] = JsonNumber(e.loss);
      m["lr"] = JsonNumber(e.lr);
      m["grad_norm"] = JsonNumber(e.grad_norm);
      m["tokens"] = JsonNumber(static_cast<double>(e.tokens));
      m["tokens_per_second"] = JsonNumber(e.tokens_per_second);
      m["eta_seconds"] = JsonNumber(e.eta_seconds);
      m["peak_bytes"] = JsonNumber(static_cast<double>(e.peak_bytes));
      m["current_bytes"] = JsonNumber(static_cast<double>(e.current_bytes));
      m["step_seconds"] = JsonNumber(e.step_seconds);
      m["blas_threads"] = JsonNumber(static_cast<double>(e.blas_threads));
      break;
    case EventKind::kEval:
      m["eval_loss"] = JsonNumber(e.eval_loss);
      break;
    case EventKind::kCheckpoint:
    case EventKind::kStopped:
      m["path"] = JsonString(e.path);
      break;
    case EventKind::kFinished:
      m["path"] = JsonString(e.path);
      if (!e.adapter_path.empty()) m["adapter_path"] = JsonString(e.adapter_path);
      m["peak_bytes"] = JsonNumber(static_cast<double>(e.peak_bytes));
      m["tokens"] = JsonNumber(static_cast<double>(e.tokens));
      break;
    case EventKind::kWarning:
    case EventKind::kFailed:
      m["code"] = JsonString(e.code);
      m["message"] = JsonString(e.message);
      break;
  }
  return SerializeJson(o);
}

TrainingEvent EventFromJson(const std::string& line) {
  const Json o = ParseJson(line);
  if (o.kind != Json::kObject) Bad("event is not a JSON object");
  TrainingEvent e;
  const std::string kind = StringOr(o, "event");
  bool known = false;
  for (EventKind k : kKinds) {
    if (EventKindName(k) == kind) {
      e.kind = k;
      known = true;
    }
  }
  if (!known) Bad("unknown event '" + kind + "'");
  e.time = NumberOr(o, "time", 0);
  e.step = IntOr(o, "step", 0);
  e.total_steps = IntOr(o, "total_steps", 0);
  e.device = StringOr(o, "device");
  e.quota_bytes = IntOr(o, "quota_bytes", 0);
  e.chunk_size = IntOr(o, "chunk_size", 0);
  e.mode = StringOr(o, "mode");
  e.predicted_peak_bytes = IntOr(o, "predicted_peak_bytes", 0);
  e.resumed_from_step = IntOr(o, "resumed_from_step", -1);
  e.rank = IntOr(o, "rank", 0);
  e.world_size = IntOr(o, "world_size", 1);
  e.loss = NumberOr(o, "loss", 0);
  e.lr = NumberOr(o, "lr", 0);
  e.grad_norm = NumberOr(o, "grad_norm", 0);
  e.tokens = IntOr(o, "tokens", 0);
  e.tokens_per_second = NumberOr(o, "tokens_per_second", 0);
  e.eta_seconds = NumberOr(o, "eta_seconds", 0);
  e.peak_bytes = IntOr(o, "peak_bytes", 0);
  e.current_bytes = IntOr(o, "current_bytes", 0);
  e.step_seconds = NumberOr(o, "step_seconds", 0);
  e.blas_threads = IntOr(o, "blas_threads", 0);
  e.eval_loss = NumberOr(o, "eval_loss", 0);
  e.path = StringOr(o, "path");
  e.adapter_path = StringOr(o, "adapter_path");
  e.code = StringOr(o, "code");
  e.message = StringOr(o, "message");
  return e;
}

std::string ControlToJson(const ControlCommand& c) {
  Json o;
  o.kind = Json::kObject;
  if (c.kind == ControlCommand::Kind::kSetQuota) {
    o.members["command"] = JsonString("set_quota");
    o.members["quota_bytes"] = JsonNumber(static_cast<double>(c.quota_bytes));
  } else {
    o.members["command"] = JsonString("set_threads");
    o.members["threads"] = JsonNumber(static_cast<double>(c.threads));
  }
  return SerializeJson(o);
}

ControlCommand ControlFromJson(const std::string& line) {
  const Json o = ParseJson(line);
  if (o.kind != Json::kObject) Bad("control command is not a JSON object");
  const std::string name = StringOr(o, "command");
  ControlCommand c;
  if (name == "set_quota") {
    c.kind = ControlCommand::Kind::kSetQuota;
    c.quota_bytes = IntOr(o, "quota_bytes", 0);
    if (c.quota_bytes <= 0) Bad("set_quota: quota_bytes must be > 0");
  } else if (name == "set_threads") {
    c.kind = ControlCommand::Kind::kSetThreads;
    c.threads = IntOr(o, "threads", 0);
    if (c.threads < 1 || c.threads > 4096) Bad("set_threads: threads must be in [1, 4096]");
  } else {
    Bad("unknown control command '" + name + "' (known: set_quota, set_threads)");
  }
  return c;
}

}  // namespace slim
