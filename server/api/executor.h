// A fixed pool of threads for work that must not run on gRPC's callback threads (planning,
// which may calibrate for seconds; loading models; generation). FIFO; Shutdown() runs what was
// already submitted and joins.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace slim::server {

class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();  // Shutdown()
  void Submit(std::function<void()> task);
  void Shutdown();

 private:
  void Loop();
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace slim::server
