// A fleet replica's leases and self-fencing (docs/operations.md, "Running a fleet"). A lease
// thread renews this replica's leases whenever nothing else has for lease/4 (scheduling passes
// renew about every second and report it with NoteRenewal); a fence thread kills every live
// worker when no renewal has succeeded for 2/3 of the lease, so that a replica cut off from the
// database stops writing into job directories before its leases expire and another replica
// resumes those jobs there. The fence thread never calls the store, which may hang for as long
// as the network does.
//
// Thread-safety: every method may be called from any thread; its lock is a leaf (callers may
// hold their own).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/jobs/store.h"

namespace slim::server {

class WorkerProcess;

class LeaseFence {
 public:
  // `store` outlives the fence.
  LeaseFence(Store& store, absl::Duration lease, std::string replica_id);
  ~LeaseFence();  // Stop()

  void Start();  // starts both threads
  void Stop();   // ends and joins them; idempotent

  // A lease renewal asked for at `asked` succeeded.
  void NoteRenewal(std::chrono::steady_clock::time_point asked);

  // The workers a fencing kills: each is added when it starts and removed when it has exited.
  void AddWorker(WorkerProcess* worker);
  void RemoveWorker(WorkerProcess* worker);
  void ForgetWorkers();

  // Counts fencings: a worker started in an earlier epoch was killed by one.
  int64_t epoch() const { return epoch_.load(); }

 private:
  void LeaseLoop();
  void FenceLoop();

  Store& store_;
  const absl::Duration lease_;
  const std::string replica_id_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // When the newest successful renewal was asked for (its lease runs from a later moment).
  std::chrono::steady_clock::time_point renewed_at_ ABSL_GUARDED_BY(mu_);
  bool fenced_ ABSL_GUARDED_BY(mu_) = false;         // workers killed since the last renewal
  bool renew_failing_ ABSL_GUARDED_BY(mu_) = false;  // logged once per outage
  std::set<WorkerProcess*> live_workers_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> epoch_{0};
  std::thread lease_thread_;
  std::thread fence_thread_;
};

}  // namespace slim::server
