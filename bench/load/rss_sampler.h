// Samples the resident set size of a process (VmRSS in /proc/<pid>/status) at a fixed interval
// on its own thread, for the whole life of the sampler.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace slim::load {

// VmRSS of `pid` in KiB; nullopt if the process is gone or the file has no VmRSS line.
std::optional<int64_t> ReadRssKib(pid_t pid);

class RssSampler {
 public:
  struct Sample {
    double seconds = 0;  // since `origin`
    int64_t kib = 0;
  };

  // Takes a sample now and then every `interval` until Stop(). Samples of a process that is
  // gone are skipped.
  RssSampler(pid_t pid, absl::Time origin, absl::Duration interval);
  ~RssSampler();  // Stop()
  RssSampler(const RssSampler&) = delete;
  RssSampler& operator=(const RssSampler&) = delete;

  void Stop();
  std::vector<Sample> samples() const;

 private:
  void Loop();
  const pid_t pid_;
  const absl::Time origin_;
  const absl::Duration interval_;
  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Sample> samples_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace slim::load
