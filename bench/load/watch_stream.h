// One WatchJob stream of slim-load (gRPC callback API): reads until cancelled or ended, keeping
// the local receive time of every message and, for each event, how long after the server
// recorded it the event arrived. Progress events are also handed to a sink, so that training
// speed can be computed from the server's own timestamps.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/load/stats.h"
#include "slim/v1/slim.grpc.pb.h"

namespace slim::load {

class WatchStream final : public grpc::ClientReadReactor<v1::WatchJobResponse> {
 public:
  using Sink = std::function<void(const ProgressPoint&)>;

  // `context` carries the token; `sink` (may be empty) is called on gRPC's threads.
  WatchStream(std::unique_ptr<grpc::ClientContext> context, std::string job_id, int64_t after_sequence, Sink sink);

  // Starts the call on `stub`; messages flow until Cancel() or the server ends the stream.
  void Start(v1::Slim::Stub& stub);
  // Cancels the call (the stream then ends with CANCELLED); no-op once it has ended.
  void Cancel();
  // Waits until the stream has ended (OnDone ran); false if `timeout` passed first.
  bool WaitDone(absl::Duration timeout);

  struct Stats {
    std::string job_id;
    absl::Time opened;                    // Start()
    std::vector<absl::Time> received;     // every message, in order (the snapshot first)
    std::vector<double> delivery_ms;      // per event: receive time − the event's server time
    int64_t events = 0;
    int64_t progress_events = 0;
    bool done = false;
    bool cancelled_by_us = false;         // Cancel() was called before the stream ended
    grpc::Status status;                  // when done
  };
  Stats stats() const;

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  std::unique_ptr<grpc::ClientContext> context_;
  const Sink sink_;
  v1::WatchJobRequest request_;
  v1::WatchJobResponse response_;  // touched only by the one read in flight
  mutable absl::Mutex mu_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace slim::load
