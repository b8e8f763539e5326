// Replicas sharing a PostgreSQL store: lease reconciliation, take-overs, shrink claims (the lease
// and fence threads are LeaseFence, lease_fence.h).
#include "server/jobs/job_manager_internal.h"

namespace slim::server {

// ---------------------------------------------------------------------------------------------
// Replicas (fleets)

bool JobManager::RenewAndReconcile() {
  const auto asked = std::chrono::steady_clock::now();
  const absl::StatusOr<std::vector<JobLease>> leases = store_.RenewLeases(Lease());
  if (!leases.ok()) return false;  // the lease thread reports it (once per outage)
  fence_.NoteRenewal(asked);
  // For the other replicas' admission (capacities) and status pages (what runs where), as long
  // as this replica lives. Every lease/4 is enough: a replica counts as live while its
  // publication is younger than a lease.
  const auto now = std::chrono::steady_clock::now();
  if (now - devices_published_at_ >= std::chrono::duration<double>(options_.lease_seconds / 4) &&
      store_.PublishDevices(DevicesLocked()).ok()) {
    devices_published_at_ = now;
  }
  std::map<std::string, const JobLease*> owned;
  for (const JobLease& lease : *leases) owned[lease.job_id] = &lease;
  // Ours no more: another replica took it over after our lease lapsed. Its writes would be
  // refused anyway; its worker must stop writing into the job directory now.
  for (auto& [id, r] : running_) {
    // (A worker that reported its outcome released the job itself and is about to exit.)
    if (owned.count(id) || r->lost || r->saw_terminal) continue;
    std::fprintf(stderr, "slimd: job %s is not replica %s's any more (taken over); stopping its worker\n", id.c_str(),
                 options_.replica_id.c_str());
    r->lost = true;
    r->KillAll();
  }
  for (auto it = reserved_.begin(); it != reserved_.end();) {
    it = owned.count(*it) ? std::next(it) : reserved_.erase(it);
  }
  for (const JobLease& lease : *leases) {
    const auto running = running_.find(lease.job_id);
    if (running != running_.end()) {
      Running& r = *running->second;
      if (!lease.cancel_requested || r.cancelling || r.lost || r.draining || r.saw_terminal) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
      if (job.ok() && job->state() == v1::JOB_STATE_RUNNING) {
        (void)CancelRunning(*job, " (requested through another replica)");
      }
    } else if (reserved_.count(lease.job_id)) {
      if (!lease.cancel_requested) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
      if (job.ok()) (void)CancelQueued(*job, "cancelled while queued (requested through another replica)");
    } else {
      SettleOwnedJob(lease, absl::StrCat("its worker on replica ", options_.replica_id,
                                         " is gone and its end was not recorded; resuming from the last checkpoint"));
    }
  }
  return true;
}

void JobManager::SettleOwnedJob(const JobLease& lease, const std::string& why) {
  KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / lease.job_id).string());
  absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
  if (!job.ok()) return;
  absl::Status settled;
  if (job->state() == v1::JOB_STATE_QUEUED) {
    settled = lease.cancel_requested
                  ? CancelQueued(*job, "cancelled while queued (requested through another replica)").status()
                  : store_.ReleaseJob(job->id());
  } else if (job->state() == v1::JOB_STATE_CANCELLING || lease.cancel_requested) {
    const bool was_cancelling = job->state() == v1::JOB_STATE_CANCELLING;
    job->set_state(v1::JOB_STATE_CANCELLED);
    *job->mutable_end_time() = Now();
    settled = Record(*job, Event("cancelled", was_cancelling ? "its worker is gone; the cancellation is complete"
                                                             : "its worker is gone; cancelled as requested"))
                  .status();
  } else if (job->state() == v1::JOB_STATE_RUNNING) {
    job->set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&*job);
    job->set_replica("");
    settled = Record(*job, Event("requeued", why)).status();
  }
  if (!settled.ok()) {
    std::fprintf(stderr, "slimd: job %s: %s\n", lease.job_id.c_str(), settled.ToString().c_str());
  }
}

void JobManager::TakeOverExpiredJobs() {
  const absl::StatusOr<std::vector<JobClaim>> claims = store_.TakeOverExpiredJobs(Lease());
  if (!claims.ok()) {
    std::fprintf(stderr, "slimd: taking over jobs: %s\n", claims.status().ToString().c_str());
    return;
  }
  for (const JobClaim& claim : *claims) {
    const std::string who =
        claim.previous_owner.empty() ? std::string("a slimd without replica id") : "replica " + claim.previous_owner;
    // On one machine the lost replica's worker may still run (a frozen replica): end it first.
    KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / claim.job.id()).string());
    v1::Job job = claim.job;
    v1::JobEvent event;
    if (job.state() == v1::JOB_STATE_CANCELLING || claim.cancel_requested) {
      job.set_state(v1::JOB_STATE_CANCELLED);
      *job.mutable_end_time() = Now();
      event = Event("cancelled", who + " stopped renewing its lease while the job was being cancelled");
    } else {
      job.set_state(v1::JOB_STATE_QUEUED);
      ClearPlacement(&job);
      job.set_replica("");
      event = Event("requeued", absl::StrCat(who, " stopped renewing its lease (it stopped, crashed or lost the "
                                                  "database); taken over by replica ",
                                             options_.replica_id, ", resuming from the last checkpoint"));
    }
    std::fprintf(stderr, "slimd: replica %s took over job %s from %s\n", options_.replica_id.c_str(),
                 job.id().c_str(), who.c_str());
    if (const absl::Status recorded = Record(job, event).status(); !recorded.ok()) {
      std::fprintf(stderr, "slimd: job %s: %s\n", job.id().c_str(), recorded.ToString().c_str());
    }
  }
}

void JobManager::ReserveForShrinks(std::vector<ShrinkOrder>* shrinks) {
  std::map<std::string, bool> held;  // job the shrinks are for → this replica holds it
  for (const ShrinkOrder& s : *shrinks) {
    if (held.count(s.for_job_id)) continue;
    if (reserved_.count(s.for_job_id)) {
      held[s.for_job_id] = true;
      continue;
    }
    const absl::StatusOr<JobClaim> claim = store_.ClaimJob(s.for_job_id, Lease());
    held[s.for_job_id] = claim.ok() && !claim->cancel_requested;
    if (claim.ok()) reserved_.insert(s.for_job_id);  // a cancel request is carried out next pass
  }
  shrinks->erase(std::remove_if(shrinks->begin(), shrinks->end(),
                                [&](const ShrinkOrder& s) { return !held[s.for_job_id]; }),
                 shrinks->end());
}

void JobManager::ReleaseUnneededReservations(const std::set<std::string>& placed) {
  std::set<std::string> awaited;  // jobs that shrinks in flight make room for
  for (const auto& [id, r] : running_) {
    if (r->pending_quota > 0 && !r->shrink_for.empty()) awaited.insert(r->shrink_for);
  }
  for (auto it = reserved_.begin(); it != reserved_.end();) {
    if (placed.count(*it) || awaited.count(*it)) {
      ++it;
      continue;
    }
    (void)store_.ReleaseJob(*it);  // not ours any more, or not queued: nothing to give back
    it = reserved_.erase(it);
  }
}

}  // namespace slim::server
