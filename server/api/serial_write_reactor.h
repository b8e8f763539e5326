// A server-streaming reactor that writes one message at a time and is poked from other threads
// (job watchers, poll tickers) to write more: WatchJob and GetJobLogs. It owns the parts both
// get wrong easily — the in-flight write, the client's cancel arriving before or after a
// write completes, Finish exactly once, and a guard that outlives the reactor so a late poke
// finds it gone instead of freed.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/synchronization/mutex.h"

namespace slim::server {

// State shared between a streaming reactor and the threads that poke it: the mutex outlives
// the reactor, and `alive` says whether it may be touched.
struct StreamGuard {
  absl::Mutex mu;
  bool alive ABSL_GUARDED_BY(mu) = true;
};

template <typename Response>
class SerialWriteReactor : public grpc::ServerWriteReactor<Response> {
 public:
  void OnWriteDone(bool ok) final {
    absl::MutexLock lock(&guard_->mu);
    in_flight_ = false;
    if (!ok || cancelled_) return End(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    if (end_after_write_) return End(grpc::Status::OK);
    Next();
  }

  void OnCancel() final {
    absl::MutexLock lock(&guard_->mu);
    cancelled_ = true;
    // With a write in flight, OnWriteDone (ok or not; the order of the two is not guaranteed)
    // ends the stream.
    if (!in_flight_) End(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() final {
    {
      absl::MutexLock lock(&guard_->mu);
      guard_->alive = false;
    }
    Release();
    delete this;
  }

 protected:
  SerialWriteReactor() : guard_(std::make_shared<StreamGuard>()) {}

  // Starts the next write (Write) or ends the stream (End), or waits for a poke; called with
  // the guard's mutex held, by OnWriteDone and by the subclass (its constructor, its pokes).
  virtual void Next() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) = 0;
  // Unregisters the subclass's pokes; called once, without the lock, before the reactor is
  // deleted (a poke that runs after it sees guard()->alive false).
  virtual void Release() {}

  // `message` must stay valid until the write completes. `last`: the stream ends OK after it.
  void Write(const Response* message, bool last = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    in_flight_ = true;
    end_after_write_ = last;
    this->StartWrite(message);
  }
  void End(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_) return;
    finished_ = true;
    this->Finish(status);
  }
  // Whether Next may write: no write in flight and the stream not ended.
  bool CanWrite() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) { return !finished_ && !in_flight_; }

  const std::shared_ptr<StreamGuard>& guard() const { return guard_; }

 private:
  const std::shared_ptr<StreamGuard> guard_;
  bool in_flight_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool end_after_write_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool cancelled_ ABSL_GUARDED_BY(guard_->mu) = false;
};

}  // namespace slim::server
