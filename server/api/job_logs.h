// GetJobLogs (docs/service.md, "Logs"): a job's worker logs (one file per data-parallel rank,
// JobManager::LogsOf) streamed whole lines at a time, from the start or from each rank's last N
// lines, and with follow polled for growth until the job ends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/principal.h"
#include "server/jobs/job_manager.h"
#include "slim/v1/slim.grpc.pb.h"

namespace slim::server {

// The offset at which the last `lines` lines of the file begin (a final line without "\n"
// counts as one); 0 when it has no more than that, or does not exist. Reads only the tail.
int64_t TailOffset(const std::string& path, int64_t lines);

// Whole lines of `path` from *offset, at most about `max_bytes` (one line longer than that is
// returned whole up to 4 × max_bytes, then cut), advancing *offset past them. A last line
// without "\n" is left for later unless `flush_partial`, when it is returned with "\n" added.
// "" when nothing new (or no file yet).
std::string ReadLogLines(const std::string& path, int64_t* offset, size_t max_bytes, bool flush_partial);

// Calls each registered callback about every `period` on one thread, while any is registered.
// Callbacks must be quick; Remove does not return while the callback it removes runs.
class PollTicker {
 public:
  explicit PollTicker(absl::Duration period) : period_(period) {}
  ~PollTicker();
  int64_t Add(std::function<void()> callback);
  void Remove(int64_t handle);

 private:
  void Loop();
  const absl::Duration period_;
  absl::Mutex mu_;
  std::map<int64_t, std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  int64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // started by the first Add
};

// The reactor for one GetJobLogs call; it deletes itself when done.
grpc::ServerWriteReactor<v1::GetJobLogsResponse>* NewJobLogsReactor(JobManager& manager, PollTicker& ticker,
                                                                    const v1::GetJobLogsRequest& request,
                                                                    const absl::StatusOr<Principal>& caller);

}  // namespace slim::server
