#include "bench/load/stats.h"

#include <algorithm>
#include <cmath>

namespace slim::load {

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(q * static_cast<double>(sorted.size()));
  const size_t index = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(sorted.size()))) - 1;
  return sorted[index];
}

Summary Summarize(std::vector<double> values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = static_cast<int64_t>(values.size());
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.min = values.front();
  s.p50 = Percentile(values, 0.50);
  s.p90 = Percentile(values, 0.90);
  s.p99 = Percentile(values, 0.99);
  s.max = values.back();
  return s;
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "CODE_" + std::to_string(static_cast<int>(code));
  }
}

void MethodStats::Record(double latency_ms, grpc::StatusCode code) {
  absl::MutexLock lock(&mu_);
  latencies_ms_.push_back(latency_ms);
  if (code == grpc::StatusCode::OK) {
    ++ok_;
  } else {
    ++errors_[StatusCodeName(code)];
  }
}

MethodStats::Result MethodStats::Get() const {
  absl::MutexLock lock(&mu_);
  Result r;
  r.latency_ms = Summarize(latencies_ms_);
  r.ok = ok_;
  r.errors = errors_;
  return r;
}

std::optional<double> StepsPerSecond(const ProgressLog& log, absl::Time from, absl::Time to) {
  const ProgressPoint* first = nullptr;
  const ProgressPoint* last = nullptr;
  for (const auto& [sequence, p] : log) {
    if (p.time < from || p.time > to) continue;
    if (first == nullptr) first = &p;
    last = &p;
  }
  if (first == nullptr || last == first || last->time <= first->time) return std::nullopt;
  return static_cast<double>(last->step - first->step) / absl::ToDoubleSeconds(last->time - first->time);
}

double LongestProgressIntervalSeconds(const ProgressLog& log, absl::Time from, absl::Time to) {
  absl::Duration longest;
  std::optional<absl::Time> previous;
  for (const auto& [sequence, p] : log) {
    if (p.time < from || p.time > to) continue;
    if (previous.has_value()) longest = std::max(longest, p.time - *previous);
    previous = p.time;
  }
  return absl::ToDoubleSeconds(longest);
}

double LongestGapSeconds(const std::vector<absl::Time>& received, absl::Time from, absl::Time to) {
  absl::Time previous = from;
  absl::Duration longest;
  for (absl::Time t : received) {
    if (t < from) continue;
    if (t > to) break;
    longest = std::max(longest, t - previous);
    previous = t;
  }
  longest = std::max(longest, to - previous);
  return absl::ToDoubleSeconds(longest);
}

}  // namespace slim::load
