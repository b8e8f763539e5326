// What slim-load computes from what it observed: latency summaries (nearest-rank percentiles
// over every sample; a run records thousands of calls, so all of them are kept), calls counted
// per gRPC status, training speed from progress events, and silences on a stream.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace slim::load {

struct Summary {
  int64_t count = 0;
  double mean = 0, min = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;  // in the unit of the values
};

// Nearest-rank percentile (the smallest value with at least q of the values at or below it) of
// `sorted` (ascending), q in (0, 1]; 0 when empty.
double Percentile(const std::vector<double>& sorted, double q);
// Count, mean, min, p50, p90, p99 and max of `values` (any order).
Summary Summarize(std::vector<double> values);

// "OK", "UNAVAILABLE", ...: the canonical name of a gRPC status code.
std::string StatusCodeName(grpc::StatusCode code);

// The calls of one RPC method. Thread-safe: Record is called from gRPC's callback threads.
class MethodStats {
 public:
  // One completed call: its latency in milliseconds (successful or not) and its status.
  void Record(double latency_ms, grpc::StatusCode code);

  struct Result {
    Summary latency_ms;                    // every completed call, errors included
    int64_t ok = 0;
    std::map<std::string, int64_t> errors;  // status name → calls that ended with it
  };
  Result Get() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<double> latencies_ms_ ABSL_GUARDED_BY(mu_);
  int64_t ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> errors_ ABSL_GUARDED_BY(mu_);
};

// A progress event of a job: its sequence, when the server recorded it, and the step reached.
struct ProgressPoint {
  std::string job_id;
  int64_t sequence = 0;
  absl::Time time;
  int64_t step = 0;
};
using ProgressLog = std::map<int64_t, ProgressPoint>;  // one job's progress events by sequence

// Steps per second of one job over [from, to]: between the first and the last progress event
// recorded in the window, by their server timestamps. nullopt with fewer than two such events.
std::optional<double> StepsPerSecond(const ProgressLog& log, absl::Time from, absl::Time to);
// The longest interval between consecutive progress events recorded in [from, to] (the job's
// own reporting cadence); 0 with fewer than two.
double LongestProgressIntervalSeconds(const ProgressLog& log, absl::Time from, absl::Time to);
// The longest interval within [from, to] without a message, given every receive time in order;
// the window's edges count, so a stream that stops delivering shows the silence up to `to`.
double LongestGapSeconds(const std::vector<absl::Time>& received, absl::Time from, absl::Time to);

}  // namespace slim::load
