#include "server/jobs/lease_fence.h"

#include <cstdio>
#include <vector>

#include "server/supervise/worker_process.h"

namespace slim::server {

LeaseFence::LeaseFence(Store& store, absl::Duration lease, std::string replica_id)
    : store_(store), lease_(lease), replica_id_(std::move(replica_id)) {}

LeaseFence::~LeaseFence() { Stop(); }

void LeaseFence::Start() {
  lease_thread_ = std::thread([this] { LeaseLoop(); });
  fence_thread_ = std::thread([this] { FenceLoop(); });
}

void LeaseFence::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (lease_thread_.joinable()) lease_thread_.join();
  if (fence_thread_.joinable()) fence_thread_.join();
}

void LeaseFence::AddWorker(WorkerProcess* worker) {
  absl::MutexLock lock(&mu_);
  live_workers_.insert(worker);
}

void LeaseFence::RemoveWorker(WorkerProcess* worker) {
  absl::MutexLock lock(&mu_);
  live_workers_.erase(worker);
}

void LeaseFence::ForgetWorkers() {
  absl::MutexLock lock(&mu_);
  live_workers_.clear();
}

void LeaseFence::NoteRenewal(std::chrono::steady_clock::time_point asked) {
  absl::MutexLock lock(&mu_);
  renewed_at_ = std::max(renewed_at_, asked);
  fenced_ = false;
  if (renew_failing_) std::fprintf(stderr, "slimd: replica %s: leases renewed again\n", replica_id_.c_str());
  renew_failing_ = false;
}

void LeaseFence::LeaseLoop() {
  const absl::Duration lease = lease_;
  const auto renew_every = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(absl::ToDoubleSeconds(lease) / 4));
  while (true) {
    std::chrono::steady_clock::time_point renewed_at;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), lease / 8);
      if (stop_) return;
      renewed_at = renewed_at_;
    }
    // Passes renew about every second; this thread covers passes that are slow or stuck (a
    // long worker kill, a store call waiting under the manager's lock).
    const auto asked = std::chrono::steady_clock::now();
    if (asked - renewed_at < renew_every) continue;
    const absl::StatusOr<std::vector<JobLease>> renewed = store_.RenewLeases(lease);
    if (renewed.ok()) {
      NoteRenewal(asked);
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (!renew_failing_) {
      std::fprintf(stderr, "slimd: replica %s: cannot renew leases: %s\n", replica_id_.c_str(),
                   renewed.status().ToString().c_str());
    }
    renew_failing_ = true;
  }
}

void LeaseFence::FenceLoop() {
  // The database's lease ends after `renewed_at_ + lease` (it counts from when the renewal ran,
  // later than when it was asked for). Killing between 2/3 and 3/4 of it leaves the rest for the
  // kill to land before any replica may take the jobs over. This thread never waits for the
  // store, which may hang for as long as the network does.
  const absl::Duration lease = lease_;
  const auto fence_after = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(absl::ToDoubleSeconds(lease) * 2 / 3));
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), lease / 12);
    const auto silent = std::chrono::steady_clock::now() - renewed_at_;
    if (stop_ || fenced_ || live_workers_.empty() || silent < fence_after) continue;
    fenced_ = true;
    ++epoch_;
    std::fprintf(stderr,
                 "slimd: replica %s: no lease renewal for %.1f s; stopping its %zu worker(s) before another replica "
                 "may take their jobs over\n",
                 replica_id_.c_str(), std::chrono::duration<double>(silent).count(), live_workers_.size());
    for (WorkerProcess* worker : live_workers_) worker->Kill();
  }
}

}  // namespace slim::server
