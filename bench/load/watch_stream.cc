#include "bench/load/watch_stream.h"

#include "absl/time/clock.h"

namespace slim::load {

WatchStream::WatchStream(std::unique_ptr<grpc::ClientContext> context, std::string job_id, int64_t after_sequence,
                         Sink sink)
    : context_(std::move(context)), sink_(std::move(sink)) {
  request_.set_id(job_id);
  request_.set_after_sequence(after_sequence);
  stats_.job_id = std::move(job_id);
}

void WatchStream::Start(v1::Slim::Stub& stub) {
  {
    absl::MutexLock lock(&mu_);
    stats_.opened = absl::Now();
  }
  stub.async()->WatchJob(context_.get(), &request_, this);
  StartRead(&response_);
  StartCall();
}

void WatchStream::Cancel() {
  {
    absl::MutexLock lock(&mu_);
    if (stats_.done) return;
    stats_.cancelled_by_us = true;
  }
  context_->TryCancel();
}

bool WatchStream::WaitDone(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stats_.done; };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

WatchStream::Stats WatchStream::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void WatchStream::OnReadDone(bool ok) {
  if (!ok) return;  // the stream is over; OnDone follows with its status
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    stats_.received.push_back(now);
    if (response_.has_event()) {
      const v1::JobEvent& e = response_.event();
      ++stats_.events;
      const absl::Time recorded = absl::FromUnixSeconds(e.time().seconds()) + absl::Nanoseconds(e.time().nanos());
      stats_.delivery_ms.push_back(absl::ToDoubleMilliseconds(now - recorded));
      if (e.kind() == "progress") ++stats_.progress_events;
    }
  }
  if (sink_ && response_.has_event() && response_.event().kind() == "progress") {
    const v1::JobEvent& e = response_.event();
    sink_({request_.id(), e.sequence(), absl::FromUnixSeconds(e.time().seconds()) + absl::Nanoseconds(e.time().nanos()),
           e.progress().step()});
  }
  StartRead(&response_);
}

void WatchStream::OnDone(const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  stats_.status = status;
  stats_.done = true;
}

}  // namespace slim::load
