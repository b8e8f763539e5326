// Scheduling passes, reservations, worker processes and their events.
#include "server/jobs/job_manager_internal.h"

#include <optional>

namespace slim::server {

namespace {

// Marks `job` FAILED with `error`; `code` classifies it for clients (Job.error_code).
void SetFailed(v1::Job* job, absl::StatusCode code, const std::string& error) {
  job->set_state(v1::JOB_STATE_FAILED);
  job->set_error(error);
  job->set_error_code(static_cast<int>(code));
}

// The worker protocol's error code names (docs/worker-protocol.md) as status codes.
absl::StatusCode WorkerErrorCode(const std::string& name) {
  return static_cast<absl::StatusCode>(GrpcCode(ErrorCodeFromName(name)));
}

std::string QuotaCommand(int64_t quota_bytes) {
  ControlCommand c;
  c.kind = ControlCommand::Kind::kSetQuota;
  c.quota_bytes = quota_bytes;
  return ControlToJson(c);
}

std::string ThreadsCommand(int64_t threads) {
  ControlCommand c;
  c.kind = ControlCommand::Kind::kSetThreads;
  c.threads = threads;
  return ControlToJson(c);
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError("cannot write " + path + ": " + ec.message());
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reservations

std::map<std::string, int64_t> JobManager::CommittedLocked() {
  std::map<std::string, int64_t> footprint;
  for (const DeviceCapacity& d : options_.devices) footprint[d.name] = d.worker_footprint_bytes;
  std::map<std::string, int64_t> committed;
  for (const auto& [id, r] : running_) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    for (const Rank& k : r->ranks) {
      committed[k.device] += std::max(job->quota_bytes(), r->pending_quota) + footprint[k.device];
    }
  }
  for (const auto& [id, held] : reservations_) committed[held.device] += held.bytes + footprint[held.device];
  return committed;
}

absl::StatusOr<std::unique_ptr<DeviceHold>> JobManager::Reserve(const std::string& kind, int64_t bytes,
                                                                const std::string& purpose) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, int64_t> committed = CommittedLocked();
  const DeviceCapacity* best = nullptr;
  int64_t best_free = 0;
  for (const DeviceCapacity& d : options_.devices) {
    if (d.kind != kind) continue;
    const auto it = committed.find(d.name);
    // What a process there could still have as its quota.
    const int64_t free = d.capacity_bytes - (it == committed.end() ? 0 : it->second) - d.worker_footprint_bytes;
    if (best == nullptr || free > best_free) best = &d, best_free = free;
  }
  if (best == nullptr) return absl::FailedPreconditionError(absl::StrCat(purpose, ": this server has no ", kind, " device"));
  if (best_free < bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        purpose, ": needs ", FormatBytes(bytes), " of a ", kind, " device and the most any has free is ",
        FormatBytes(std::max<int64_t>(best_free, 0)), " (", best->name,
        " beside its worker footprint); the rest is committed to jobs. Try again when one ends"));
  }
  const std::string id = absl::StrCat(purpose, "-", next_reservation_++);
  reservations_[id] = {best->name, bytes, purpose};
  wake_ = true;  // the status page and metrics show the new commitment at the next pass
  return std::make_unique<ReservationHold>(*this, id, best->name);
}

// ---------------------------------------------------------------------------------------------
// Scheduling and workers

void JobManager::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void JobManager::SchedulerLoop() {
  // Checkpoint retention is a slow concern: swept at start, then every quarter of the retention
  // period, between once a second and once a minute.
  const auto sweep_every = std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(
      std::clamp(options_.checkpoint_retention_seconds / 4, 1.0, 60.0)));
  auto next_sweep = std::chrono::steady_clock::now();
  while (true) {
    std::vector<std::unique_ptr<WorkerProcess>> finished;
    {
      absl::MutexLock lock(&mu_);
      const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stopping_ || poke_.load(); };
      mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(options_.scheduler_interval_seconds));
      if (stopping_) return;
      wake_ = false;
      poke_ = false;
      finished.swap(finished_workers_);
    }
    finished.clear();  // joins their reader threads, outside the lock
    SchedulePass();
    if (std::chrono::steady_clock::now() >= next_sweep) {
      SweepCheckpoints();
      next_sweep = std::chrono::steady_clock::now() + sweep_every;
    }
  }
}

void JobManager::SweepCheckpoints() {
  if (options_.checkpoint_retention_seconds <= 0) return;
  absl::StatusOr<std::vector<v1::Job>> ended =
      store_.JobsInStates({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED});
  if (!ended.ok()) {
    std::fprintf(stderr, "slimd: checkpoint retention: %s\n", ended.status().ToString().c_str());
    return;
  }
  const int64_t cutoff = absl::ToUnixSeconds(absl::Now()) - static_cast<int64_t>(options_.checkpoint_retention_seconds);
  for (const v1::Job& job : *ended) {
    if (!job.has_end_time() || job.end_time().seconds() > cutoff) continue;
    const fs::path checkpoints = fs::path(options_.data_dir) / "jobs" / job.id() / "checkpoints";
    std::error_code ec;
    if (!fs::exists(checkpoints, ec)) continue;
    fs::remove_all(checkpoints, ec);
    std::fprintf(stderr, "%s msg=%s\n", JobLogLine(job.id(), "checkpoints-deleted").c_str(),
                 LogfmtValue(ec ? ec.message() : "ended longer ago than --checkpoint-retention").c_str());
  }
}

void JobManager::SchedulePass() {
  absl::MutexLock lock(&mu_);
  if (draining_) return;
  if (fleet()) {
    if (!RenewAndReconcile()) return;
    TakeOverExpiredJobs();
  }
  // One read for the pass: the queue, and for a single slimd the running and cancelling jobs
  // too, which ReconcileOrphans compares with the live workers (a fleet's passes do that with
  // its leases).
  absl::StatusOr<std::vector<v1::Job>> active = store_.JobsInStates(
      fleet() ? std::vector<v1::JobState>{v1::JOB_STATE_QUEUED}
              : std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING});
  if (!active.ok()) {
    std::fprintf(stderr, "slimd: scheduler: %s\n", active.status().ToString().c_str());
    return;
  }
  if (!fleet()) ReconcileOrphans(*active);
  std::vector<QueuedJob> queued;
  for (const v1::Job& job : *active) {
    if (job.state() != v1::JOB_STATE_QUEUED) continue;
    if (running_.count(job.id())) continue;  // its previous worker has not exited yet
    // A data-parallel job's ranks must share one kind of device (one process group): without
    // a kind, the one CreateJob planned and counted devices for.
    std::string kind = job.spec().memory().device_kind();
    if (kind.empty() && Workers(job.spec()) > 1) kind = options_.devices.front().kind;
    queued.push_back({job.id(), kind, job.priority(), job.quota_bytes(),
                      job.create_time().seconds() * 1000000000 + job.create_time().nanos(), Workers(job.spec())});
  }
  if (!fleet()) {
    // A job this server's devices can never take (it was restarted with fewer or smaller
    // devices) waits, like any other, but says why, once per run of the server. (In a fleet,
    // another replica may have the devices.)
    for (const QueuedJob& q : queued) {
      const std::string why = WhyNeverPlaceable(options_.devices, q);
      if (why.empty() || !never_placeable_.insert(q.id).second) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(q.id);
      if (job.ok()) (void)Record(*job, Event("warning", "cannot be placed on this server's devices: " + why));
    }
  }
  std::vector<RunningJob> running;
  for (const auto& [id, r] : running_) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    // A job with a shrink in flight keeps its old quota committed and is not shrunk again.
    // Data-parallel jobs are never shrunk (server/sched/scheduler.h).
    const bool shrinkable = r->pending_quota == 0 && !r->shrink_refused && !r->cancelling && !r->draining &&
                            !r->data_parallel();
    // A growing job commits its larger quota at once (before the worker may use it); a
    // shrinking one keeps its old quota until the worker confirms.
    const int64_t committed = std::max(job->quota_bytes(), r->pending_quota);
    const bool may_grow = !r->grow_refused && !r->cancelling && !r->draining && !r->data_parallel();
    for (const Rank& k : r->ranks) {
      RunningJob running_job{id, k.device, job->priority(), committed, shrinkable ? job->min_quota_bytes() : 0,
                             job->create_time().seconds() * 1000000000 + job->create_time().nanos()};
      running_job.requested_quota_bytes = may_grow ? job->requested_quota_bytes() : 0;
      running_job.quota_change_pending = r->pending_quota > 0;
      running.push_back(running_job);
    }
  }
  // Reservations hold their memory like jobs that are neither shrunk nor grown.
  for (const auto& [id, held] : reservations_) running.push_back({id, held.device, 0, held.bytes, 0, 0});
  // A job for which shrinks are in flight waits for their confirmation: planned again meanwhile,
  // while the shrinking jobs still hold their old quotas and cannot be shrunk twice, it would
  // look like a job that fits nowhere and shrink jobs on another device as well.
  std::set<std::string> awaiting_shrinks;
  for (const auto& [id, r] : running_) {
    if (r->pending_quota > 0 && !r->shrink_for.empty()) awaiting_shrinks.insert(r->shrink_for);
  }
  std::vector<QueuedJob> schedulable;
  for (const QueuedJob& q : queued) {
    if (!awaiting_shrinks.count(q.id)) schedulable.push_back(q);
  }
  ScheduleDecision decision = Schedule(options_.devices, running, schedulable);
  if (fleet()) ReserveForShrinks(&decision.shrinks);
  for (const ShrinkOrder& s : decision.shrinks) {
    Running& r = *running_.at(s.job_id);
    const absl::Status sent = r.worker().SendControl(
        QuotaCommand(s.quota_bytes));
    if (sent.ok()) {
      r.pending_quota = s.quota_bytes;
      r.shrink_for = s.for_job_id;
    }
  }
  for (const GrowOrder& g : decision.grows) {
    Running& r = *running_.at(g.job_id);
    const absl::Status sent = r.worker().SendControl(
        QuotaCommand(g.quota_bytes));
    if (sent.ok()) r.pending_quota = g.quota_bytes;
  }
  std::set<std::string> placed;
  for (const Placement& p : decision.placements) {
    if (fleet()) {
      // Another replica may be placing the same job right now: the claim decides.
      absl::StatusOr<JobClaim> claim = store_.ClaimJob(p.job_id, Lease());
      if (!claim.ok()) {
        if (claim.status().code() != absl::StatusCode::kAborted &&
            claim.status().code() != absl::StatusCode::kFailedPrecondition) {
          std::fprintf(stderr, "slimd: scheduler: %s\n", claim.status().ToString().c_str());
        }
        continue;
      }
      placed.insert(p.job_id);
      reserved_.erase(p.job_id);
      if (claim->cancel_requested) {
        (void)CancelQueued(claim->job, "cancelled while queued");
        continue;
      }
    } else {
      placed.insert(p.job_id);
    }
    const absl::Status launched = Launch(p.job_id, p.devices);
    if (!launched.ok()) {
      absl::StatusOr<v1::Job> job = store_.GetJob(p.job_id);
      if (job.ok()) {
        SetFailed(&*job, launched.code(), std::string(launched.message()));
        *job->mutable_end_time() = Now();
        (void)Record(*job, Event("failed", std::string(launched.message())));
      }
    }
  }
  if (fleet()) ReleaseUnneededReservations(placed);
  BalanceCpuThreads();
  // Queue positions for the jobs still waiting. (In a fleet every replica computes the same
  // order; a write that races another replica is refused by the store and skipped.)
  std::vector<QueuedJob> waiting;
  for (const QueuedJob& q : queued) {
    if (!placed.count(q.id)) waiting.push_back(q);
  }
  std::vector<v1::Job> still_queued;
  for (const auto& [id, position] : QueuePositions(waiting)) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    if (job->queue_position() != position) {
      job->set_queue_position(position);
      (void)store_.SaveJob(*job);
    }
    still_queued.push_back(*job);
  }
  if (observer_ != nullptr) {
    absl::StatusOr<std::map<v1::JobState, int64_t>> counts = store_.CountJobsByState();
    observer_->OnSchedulePass(DevicesLocked(), still_queued, counts.ok() ? *counts : std::map<v1::JobState, int64_t>{});
  }
}

absl::Status JobManager::Launch(const std::string& job_id, const std::vector<std::string>& devices) {
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  std::string kind;
  Principal owner;
  owner.tenant = job.tenant();
  ASSIGN_OR_RETURN(JobSpec spec, admission_.ResolveSpec(job.spec(), owner, &kind));
  spec.device = WorkerDevice(devices.front());
  spec.quota_bytes = job.quota_bytes();
  const fs::path dir = fs::path(options_.data_dir) / "jobs" / job_id;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir.string() + ": " + ec.message());
  // Workers of an earlier attempt that are still alive here (a replica that died or lost the
  // job on this machine) must not write checkpoints next to the new ones.
  KillOrphanedWorkers(dir.string());
  const std::string spec_path = (dir / "worker-spec.json").string();
  RETURN_IF_ERROR(WriteFileAtomically(spec_path, SerializeJson(JobSpecToJson(spec)) + "\n"));

  const int attempt = job.attempts() + 1;
  const int world_size = static_cast<int>(devices.size());
  // Data-parallel ranks meet through a c10d FileStore that must not exist yet: a new file per
  // attempt, and those of earlier attempts (left by crashed groups) removed.
  std::string rendezvous;
  if (world_size > 1) {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind("dist-init.", 0) == 0) fs::remove(it->path(), ec);
    }
    ec.clear();
    rendezvous = "file://" + (dir / absl::StrCat("dist-init.", attempt)).string();
  }
  // New CPU workers start with an even share of the cores; BalanceCpuThreads at the end of
  // this pass evens out every worker's.
  int cpu_workers = static_cast<int>(std::count_if(devices.begin(), devices.end(), IsCpuDevice));
  for (const auto& [id, other] : running_) {
    for (const Rank& k : other->ranks) cpu_workers += k.worker != nullptr && IsCpuDevice(k.device) ? 1 : 0;
  }
  const int start_threads = cpu_thread_budget_ > 0 ? std::max(1, cpu_thread_budget_ / std::max(1, cpu_workers)) : 0;
  auto r = std::make_unique<Running>();
  r->attempt = attempt;
  r->fence_epoch = fence_.epoch();
  r->ranks.resize(devices.size());
  std::string pids;
  absl::Status started;
  for (int rank = 0; rank < world_size && started.ok(); ++rank) {
    WorkerOptions w;
    w.argv = {options_.worker_binary, "run", "--spec", spec_path, "--out", dir.string(),
              "--events-fd", "3", "--control-stdin", "--progress-interval", "1"};
    // The cache admission planned with (EngineCommands), so both plan from one calibration.
    if (!options_.calibration_cache_dir.empty()) {
      w.argv.push_back("--calibration-cache");
      w.argv.push_back(options_.calibration_cache_dir);
    }
    if (world_size > 1) {
      for (const std::string& arg : {std::string("--dist-rank"), std::to_string(rank), std::string("--dist-world-size"),
                                     std::to_string(world_size), std::string("--dist-init"), rendezvous,
                                     std::string("--device"), WorkerDevice(devices[rank])}) {
        w.argv.push_back(arg);
      }
    }
    Rank& k = r->ranks[rank];
    k.device = devices[rank];
    if (start_threads > 0 && IsCpuDevice(k.device)) {
      w.argv.push_back("--blas-threads");
      w.argv.push_back(std::to_string(start_threads));
      k.blas_threads = start_threads;
    }
    w.log_path = (dir / WorkerLogName(rank)).string();
    w.nice = options_.worker_nice;
    w.on_event = [this, job_id, rank](const TrainingEvent& e) { OnWorkerEvent(job_id, rank, e); };
    w.on_exit = [this, job_id, attempt, rank](const WorkerExit& exit) { OnWorkerExit(job_id, attempt, rank, exit); };
    absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Start(std::move(w));
    if (!worker.ok()) {
      started = worker.status();
      break;
    }
    k.worker = *std::move(worker);
    absl::StrAppend(&pids, k.worker->pid(), "\n");
    fence_.AddWorker(k.worker.get());
  }
  // The workers run in their own process groups and would outlive a killed server: the next
  // server reads this file and ends them before resuming the job (KillOrphanedWorkers).
  (void)WriteFileAtomically((dir / "worker.pid").string(), pids);
  Running& running = *r;
  running_[job_id] = std::move(r);
  if (!started.ok()) {
    // A rank could not start: the ones that did are ended (their exits are not recorded) and
    // the caller fails the job.
    running.lost = true;
    for (Rank& k : running.ranks) k.exited = k.worker == nullptr;
    running.KillAll();
    if (std::all_of(running.ranks.begin(), running.ranks.end(), [](const Rank& k) { return k.exited; })) {
      running_.erase(job_id);
    }
    return started;
  }

  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_device(devices.front());
  job.clear_devices();
  for (const std::string& device : devices) job.add_devices(device);
  job.set_replica(options_.replica_id);
  job.set_attempts(attempt);
  job.set_queue_position(0);
  *job.mutable_start_time() = Now();
  std::string where;
  for (int rank = 0; rank < world_size; ++rank) {
    absl::StrAppend(&where, rank == 0 ? "" : ", ", world_size > 1 ? absl::StrCat("rank ", rank, ": ") : "", "worker pid ",
                    running.ranks[rank].worker->pid(), " on ", devices[rank]);
  }
  v1::JobEvent event = Event("started", absl::StrCat(where, fleet() ? " of replica " + options_.replica_id : std::string(),
                                                     ", attempt ", attempt));
  event.set_quota_bytes(job.quota_bytes());
  const absl::StatusOr<v1::Job> recorded = Record(job, event);
  if (!recorded.ok()) {
    // Not recorded (the store is unreachable, or in a fleet the job is not ours any more): the
    // workers must not run unrecorded. The job stays QUEUED; in a fleet a pass releases it.
    std::fprintf(stderr, "slimd: job %s: cannot record its start, stopping its workers: %s\n", job_id.c_str(),
                 recorded.status().ToString().c_str());
    running.lost = true;
    running.KillAll();
  }
  return absl::OkStatus();
}

void JobManager::OnWorkerEvent(const std::string& job_id, int rank, const TrainingEvent& e) {
  // A finished run's model is inspected (a slim-train process: a second or more) before the
  // lock is taken, so that RPCs and scheduling passes do not wait for it.
  std::optional<absl::StatusOr<ModelSummary>> output_summary;
  if (e.kind == EventKind::kFinished && rank == 0 && !e.path.empty()) output_summary = engine_.Inspect(e.path);
  absl::MutexLock lock(&mu_);
  const auto it = running_.find(job_id);
  if (it == running_.end() || it->second->lost) return;
  Running& r = *it->second;
  if (r.data_parallel() && e.kind == EventKind::kFailed) {
    // The group's outcome is decided when every rank has exited (OnWorkerExit): a rank's
    // failure makes the others fail too, and the first reason is not always the real one.
    Rank& k = r.ranks[rank];
    k.failed_code = e.code;
    k.failed_message = e.message;
    if (r.culprit < 0 && OwnFailure(k)) r.culprit = rank;
    r.TerminateAll(options_.cancel_grace_seconds);
    return;
  }
  // Ranks other than 0 report only their own plan and warnings (docs/worker-protocol.md).
  if (rank > 0 && e.kind != EventKind::kStarted && e.kind != EventKind::kWarning) return;
  // "rank 1 on cpu:1: " before the per-rank messages of a data-parallel job.
  const std::string who = r.data_parallel() ? absl::StrCat("rank ", rank, " on ", r.ranks[rank].device, ": ") : "";
  absl::StatusOr<v1::Job> stored = store_.GetJob(job_id);
  if (!stored.ok()) return;
  v1::Job job = *stored;
  v1::JobProgress& progress = *job.mutable_progress();
  v1::JobEvent event;
  switch (e.kind) {
    case EventKind::kStarted:
      if (rank == 0) {
        job.set_chunk_size(e.chunk_size);
        job.set_mode(e.mode);
        job.set_predicted_peak_bytes(e.predicted_peak_bytes);
        progress.set_total_steps(e.total_steps);
      }
      event = Event("planned", absl::StrCat(who, "chunk size ", e.chunk_size, " (", e.mode, "), predicted peak ",
                                            FormatBytes(e.predicted_peak_bytes), " of quota ", FormatBytes(e.quota_bytes),
                                            e.resumed_from_step >= 0 ? absl::StrCat(", resumed from step ", e.resumed_from_step)
                                                                     : std::string()));
      event.set_chunk_size(e.chunk_size);
      event.set_quota_bytes(e.quota_bytes);
      event.set_predicted_peak_bytes(e.predicted_peak_bytes);
      break;
    case EventKind::kProgress:
      progress.set_step(e.step);
      progress.set_total_steps(e.total_steps);
      progress.set_tokens(e.tokens);
      progress.set_loss(e.loss);
      progress.set_tokens_per_second(e.tokens_per_second);
      progress.set_eta_seconds(e.eta_seconds);
      progress.set_current_bytes(e.current_bytes);
      progress.set_step_seconds(e.step_seconds);
      progress.set_blas_threads(static_cast<int32_t>(e.blas_threads));
      job.set_observed_peak_bytes(std::max(job.observed_peak_bytes(), e.peak_bytes));
      event = Event("progress");
      event.set_observed_peak_bytes(job.observed_peak_bytes());
      break;
    case EventKind::kEval:
      progress.set_step(e.step);  // the step it was taken at (progress is throttled to ~1 s)
      progress.set_eval_loss(e.eval_loss);
      event = Event("eval", absl::StrCat("validation loss ", e.eval_loss));
      break;
    case EventKind::kCheckpoint:
      event = Event("checkpoint", absl::StrCat("step ", e.step));
      break;
    case EventKind::kReplanned: {
      const bool grown = e.quota_bytes > job.quota_bytes();
      job.set_quota_bytes(e.quota_bytes);
      job.set_chunk_size(e.chunk_size);
      job.set_mode(e.mode);
      job.set_predicted_peak_bytes(e.predicted_peak_bytes);
      job.set_observed_peak_bytes(0);  // the worker's peak restarts with the new quota
      event = Event(grown ? "grown" : "shrunk",
                    absl::StrCat("quota ", FormatBytes(e.quota_bytes), ", chunk size ", e.chunk_size, " (", e.mode,
                                 ") from step ", e.step,
                                 grown ? std::string(", the quota it asked for")
                                 : r.shrink_for.empty() ? std::string()
                                                        : ", making room for " + r.shrink_for));
      event.set_chunk_size(e.chunk_size);
      event.set_quota_bytes(e.quota_bytes);
      event.set_predicted_peak_bytes(e.predicted_peak_bytes);
      r.pending_quota = 0;
      r.shrink_for.clear();
      wake_ = true;  // the room is there now
      break;
    }
    case EventKind::kWarning:
      if (r.pending_quota > 0 && ErrorCodeFromName(e.code) == ErrorCode::kResourceExhausted) {
        // The change was refused; do not ask this worker for that kind of change again.
        (r.pending_quota > job.quota_bytes() ? r.grow_refused : r.shrink_refused) = true;
        r.pending_quota = 0;
        wake_ = true;
      }
      event = Event("warning", who + e.message);
      break;
    case EventKind::kFinished: {
      r.saw_terminal = true;
      absl::StatusOr<std::string> model_id = store_.NewId("model");
      if (!model_id.ok()) {
        SetFailed(&job, absl::StatusCode::kInternal,
                  "cannot register the output model: " + std::string(model_id.status().message()));
        event = Event("failed", job.error());
        break;
      }
      const fs::path target = fs::path(options_.data_dir) / "models" / (*model_id + ".safetensors");
      std::error_code ec;
      fs::rename(e.path, target, ec);
      if (ec) {
        SetFailed(&job, absl::StatusCode::kInternal, "cannot move the output model: " + ec.message());
        event = Event("failed", job.error());
        break;
      }
      v1::Model model;
      model.set_id(*model_id);
      model.set_name(job.display_name().empty() ? job_id : job.display_name());
      model.set_source_job(job_id);
      model.set_tenant(job.tenant());
      model.set_size_bytes(static_cast<int64_t>(fs::file_size(target, ec)));
      if (!output_summary) {
        std::fprintf(stderr, "slimd: job %s finished without naming its model file\n", job_id.c_str());
      } else if (output_summary->ok()) {
        model.set_parameters((*output_summary)->parameters);
        model.set_config_json(ConfigJson(**output_summary));
      } else {
        std::fprintf(stderr, "slimd: %s\n", std::string(output_summary->status().message()).c_str());
      }
      *model.mutable_create_time() = Now();
      if (const absl::Status put = store_.PutModel(model); !put.ok()) {
        SetFailed(&job, absl::StatusCode::kInternal, "cannot register the output model: " + std::string(put.message()));
        event = Event("failed", job.error());
        break;
      }
      job.set_output_model(*model_id);
      job.set_state(v1::JOB_STATE_SUCCEEDED);
      event = Event("succeeded", "model " + *model_id);
      break;
    }
    case EventKind::kStopped:
      if (r.cancelling) {
        r.saw_terminal = true;
        job.set_state(v1::JOB_STATE_CANCELLED);
        event = Event("cancelled", absl::StrCat("stopped at step ", e.step, " after a checkpoint"));
      } else if (r.draining && fleet()) {
        // Requeued once the process is gone (OnWorkerExit): another replica may claim the
        // job at once, and must not start a worker while this one still runs.
        r.stopped_step = e.step;
        return;
      } else if (r.draining) {
        r.saw_terminal = true;
        job.set_state(v1::JOB_STATE_QUEUED);
        ClearPlacement(&job);
        event = Event("requeued", absl::StrCat("stopped at step ", e.step, " (server shutdown); resumes from its checkpoint"));
      } else {
        // Stopped by someone else (a signal from outside): OnWorkerExit requeues it once the
        // process is gone, so that no second worker can start in its directory meanwhile.
        event = Event("warning", absl::StrCat("stopped from outside at step ", e.step, "; it will resume"));
      }
      break;
    case EventKind::kFailed:
      r.saw_terminal = true;
      SetFailed(&job, WorkerErrorCode(e.code), e.code + ": " + e.message);
      event = Event("failed", job.error());
      break;
  }
  if (IsTerminal(job.state())) *job.mutable_end_time() = Now();
  const absl::StatusOr<v1::Job> recorded = Record(job, event);
  if (fleet() && (recorded.status().code() == absl::StatusCode::kFailedPrecondition ||
                  recorded.status().code() == absl::StatusCode::kAborted)) {
    // Another replica owns the job now (it took over after our lease lapsed): stop at once.
    std::fprintf(stderr, "slimd: job %s is not this replica's any more (%s); stopping its worker\n", job_id.c_str(),
                 std::string(recorded.status().message()).c_str());
    r.lost = true;
    r.KillAll();
  }
}

void JobManager::OnWorkerExit(const std::string& job_id, int attempt, int rank, const WorkerExit& rank_exit) {
  absl::MutexLock lock(&mu_);
  const auto it = running_.find(job_id);
  if (it == running_.end() || it->second->attempt != attempt) return;
  Running& group = *it->second;
  Rank& ended = group.ranks[rank];
  ended.exited = true;
  ended.exit_order = static_cast<int>(
      std::count_if(group.ranks.begin(), group.ranks.end(), [](const Rank& k) { return k.exited; }));
  ended.exit = rank_exit;
  fence_.RemoveWorker(ended.worker.get());
  finished_workers_.push_back(std::move(ended.worker));
  const bool abnormal = rank_exit.signaled || (rank_exit.exit_status != 0 && rank_exit.exit_status != 75);
  // A rank that crashed or was killed by someone else, without reporting that a peer went away.
  if (group.culprit < 0 && abnormal && !ended.told_to_stop && ended.failed_code.empty()) group.culprit = rank;
  if (group.data_parallel() && (abnormal || rank == 0)) {
    // The others fail at their next collective anyway, and after rank 0 (which writes the
    // outputs and checkpoints) there is nothing left to wait for: make sure none is left behind.
    group.TerminateAll(options_.cancel_grace_seconds);
  }
  if (!std::all_of(group.ranks.begin(), group.ranks.end(), [](const Rank& k) { return k.exited; })) return;
  // Every rank is gone: only now may the job run again.
  std::unique_ptr<Running> r = std::move(it->second);
  running_.erase(it);
  wake_ = true;
  if (r->lost) return;  // not this replica's job (any more): nothing to record
  absl::StatusOr<v1::Job> stored = store_.GetJob(job_id);
  if (!stored.ok()) return;
  v1::Job job = *stored;
  // A job whose outcome was recorded is done, unless a cancel arrived after that record.
  if (r->saw_terminal && job.state() != v1::JOB_STATE_CANCELLING) return;

  // The rank whose end explains the group's (the only one of an ordinary job): the first that
  // reported a failure of its own, or crashed or was killed before slimd stopped any rank
  // (r->culprit); else the first to end abnormally without reporting that a peer went away
  // (it may have been killed from outside just as slimd was stopping it); else the first to
  // end abnormally; else rank 0.
  const auto abnormal_exit = [](const Rank& k) {
    return k.exit.signaled || (k.exit.exit_status != 0 && k.exit.exit_status != 75);
  };
  const auto first_exit_where = [&](const auto& pred) {
    auto found = r->ranks.end();
    for (auto k = r->ranks.begin(); k != r->ranks.end(); ++k) {
      if (pred(*k) && (found == r->ranks.end() || k->exit_order < found->exit_order)) found = k;
    }
    return found;
  };
  auto culprit = r->culprit >= 0 ? r->ranks.begin() + r->culprit : r->ranks.end();
  if (culprit == r->ranks.end()) {
    culprit = first_exit_where([&](const Rank& k) { return abnormal_exit(k) && k.failed_code.empty(); });
  }
  if (culprit == r->ranks.end()) culprit = first_exit_where(abnormal_exit);
  if (culprit == r->ranks.end()) culprit = r->ranks.begin();
  const WorkerExit& exit = culprit->exit;
  const std::string worker =
      r->data_parallel() ? absl::StrCat("rank ", culprit - r->ranks.begin(), " of ", r->ranks.size(), " (",
                                        culprit->device, ")")
                         : "worker";
  const std::string how = exit.signaled ? absl::StrCat("killed by signal ", exit.signal)
                                        : absl::StrCat("exited with status ", exit.exit_status);
  const bool fenced = r->fence_epoch != fence_.epoch();
  v1::JobEvent event;
  if (r->cancelling) {
    job.set_state(v1::JOB_STATE_CANCELLED);
    event = Event("cancelled", worker + " " + how);
  } else if (r->draining) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", r->stopped_step >= 0
                                  ? absl::StrCat("stopped at step ", r->stopped_step,
                                                 " (server shutdown); resumes from its checkpoint")
                                  : worker + " " + how + " during server shutdown; resumes from its last checkpoint");
  } else if (fenced) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", absl::StrCat("replica ", options_.replica_id,
                                           " could not renew its leases in time and stopped the worker (", how,
                                           "); resumes from its last checkpoint"));
  } else if (r->data_parallel() && OwnFailure(*culprit)) {
    // A data-parallel rank's own failure (an ordinary worker's was recorded when reported).
    SetFailed(&job, WorkerErrorCode(culprit->failed_code),
              absl::StrCat(culprit->failed_code, ": ", worker, ": ", culprit->failed_message));
    event = Event("failed", job.error());
  } else if (!exit.signaled && exit.exit_status == 75) {
    // Stopped from outside after a checkpoint: not a crash, resume it.
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", worker + " was stopped from outside; resumes from its last checkpoint");
  } else if (job.crash_retries() < options_.max_retries) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    job.set_crash_retries(job.crash_retries() + 1);
    event = Event("retrying", absl::StrCat(worker, " ", how, "; retrying from the last checkpoint (retry ",
                                           job.crash_retries(), " of ", options_.max_retries, ")\n", exit.stderr_tail));
  } else {
    SetFailed(&job, absl::StatusCode::kInternal,
              absl::StrCat(worker, " ", how, " after ", job.crash_retries(), " retries: ", exit.stderr_tail));
    event = Event("failed", job.error());
  }
  if (IsTerminal(job.state())) *job.mutable_end_time() = Now();
  (void)Record(job, event);
}


void JobManager::BalanceCpuThreads() {
  const int budget = cpu_thread_budget_;
  if (budget == 0) return;
  std::vector<Rank*> cpu;  // live CPU workers, in job id and rank order
  for (auto& [id, r] : running_) {
    for (Rank& k : r->ranks) {
      if (k.worker != nullptr && !r->lost && IsCpuDevice(k.device)) cpu.push_back(&k);
    }
  }
  const int n = static_cast<int>(cpu.size());
  for (int i = 0; i < n; ++i) {
    // An even split; the first budget % n workers get the cores left over.
    const int share = std::max(1, budget / n + (i < budget % n ? 1 : 0));
    if (cpu[i]->blas_threads == share) continue;
    if (cpu[i]->worker->SendControl(ThreadsCommand(share)).ok()) {
      cpu[i]->blas_threads = share;
    }
  }
}

}  // namespace slim::server
