// The job manager: start, shutdown and the jobs API (the scheduler and workers are in
// job_manager_runner.cc, replicas in job_manager_fleet.cc; admission and the catalog are classes
// of their own, admission.h and catalog.h).
#include "server/jobs/job_manager_internal.h"

#include <google/protobuf/util/message_differencer.h>

#include "base/process_memory.h"

namespace slim::server {
namespace {

// Specs without memory.device_kind, and generations, use the kind of the first device.
std::string DefaultDeviceKind(const JobManagerOptions& o) { return o.devices.empty() ? "cpu" : o.devices.front().kind; }

// slimd's log line for a job's lifecycle event (docs/operations.md, "Logs"): every event but
// the per-step ones (progress, eval, checkpoint), as logfmt fields after "slimd: ", e.g.
//   slimd: time=2026-12-06T08:01:02Z job=job-000004 event=failed state=FAILED tenant=alice
//   device=cpu:0 attempt=1 msg="resource_exhausted: ..."
void LogLifecycle(const v1::Job& job, const v1::JobEvent& event, const std::string& replica) {
  if (event.kind() == "progress" || event.kind() == "eval" || event.kind() == "checkpoint") return;
  std::string line = absl::StrCat(JobLogLine(job.id(), event.kind()), " state=", StateName(job.state()));
  if (!job.tenant().empty()) absl::StrAppend(&line, " tenant=", LogfmtValue(job.tenant()));
  if (!job.device().empty()) absl::StrAppend(&line, " device=", LogfmtValue(job.device()));
  if (!replica.empty()) absl::StrAppend(&line, " replica=", LogfmtValue(replica));
  if (job.attempts() > 0) absl::StrAppend(&line, " attempt=", job.attempts());
  if (!event.message().empty()) absl::StrAppend(&line, " msg=", LogfmtValue(event.message()));
  std::fprintf(stderr, "%s\n", line.c_str());
}

}  // namespace

JobManager::JobManager(Store& store, JobManagerOptions options, JobObserver* observer)
    : store_(store),
      options_(std::move(options)),
      observer_(observer),
      cpu_thread_budget_(options_.worker_cpu_threads < 0   ? 0
                         : options_.worker_cpu_threads > 0 ? options_.worker_cpu_threads
                                                           : AvailableCpuCores()),
      fence_(store_, Lease(), options_.replica_id),
      engine_(EngineCommandsOptions{options_.worker_binary, options_.calibration_cache_dir, TempDir()}),
      catalog_(store_, engine_, *this,
               CatalogOptions{options_.data_dir, TempDir(), options_.max_dataset_bytes,
                              options_.tenant_max_dataset_bytes, options_.generate_quota_bytes,
                              DefaultDeviceKind(options_)}),
      admission_(store_, engine_, catalog_, *this,
                 AdmissionOptions{options_.checkpoint_every, DefaultDeviceKind(options_),
                                  options_.tenant_max_jobs, options_.tenant_max_quota_bytes,
                                  options_.tenant_max_calls}) {}

JobManager::~JobManager() { Shutdown(); }

std::string JobManager::TempDir() const {
  const fs::path tmp = fs::path(options_.data_dir) / "tmp";
  return (fleet() ? tmp / options_.replica_id : tmp).string();
}

v1::ListDevicesResponse JobManager::DeclaredDevices() const {
  v1::ListDevicesResponse response;
  for (const DeviceCapacity& d : options_.devices) {
    v1::Device* device = response.add_devices();
    device->set_name(d.name);
    device->set_kind(d.kind);
    device->set_capacity_bytes(d.capacity_bytes);
    device->set_worker_footprint_bytes(d.worker_footprint_bytes);
    device->set_replica(options_.replica_id);
  }
  return response;
}

std::vector<v1::ListDevicesResponse> JobManager::FleetDevices() {
  if (!fleet()) return {};
  // Published with the replicas' lease renewals; when the store cannot be read, none.
  absl::StatusOr<std::vector<v1::ListDevicesResponse>> devices = store_.FleetDevices(Lease());
  return devices.ok() ? *std::move(devices) : std::vector<v1::ListDevicesResponse>{};
}

absl::Status JobManager::Start() {
  for (const std::string& dir : {std::string("datasets"), std::string("models"), std::string("jobs"), TempDir()}) {
    std::error_code ec;
    fs::create_directories(fs::path(options_.data_dir) / dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", options_.data_dir, "/", dir, ": ", ec.message()));
  }
  // Uploads in progress when a previous server stopped are incomplete: remove them (in a
  // fleet only this replica's: the others' may be in progress).
  for (const auto& entry : fs::directory_iterator(TempDir())) {
    std::error_code ec;
    if (entry.is_regular_file(ec)) fs::remove(entry.path(), ec);
  }
  if (fleet()) {
    // Listening first: nothing recorded by another replica from here on goes unheard.
    RETURN_IF_ERROR(store_.Listen([this](const StoreNotification& n) { OnStoreNotification(n); }));
    const auto asked = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(const std::vector<JobLease> owned, store_.RenewLeases(Lease()));
    fence_.NoteRenewal(asked);
    RETURN_IF_ERROR(store_.PublishDevices(DeclaredDevices()));
    {
      // This replica id's jobs from before a restart: their workers are gone or are killed
      // here; the others' jobs are theirs until their leases expire.
      absl::MutexLock lock(&mu_);
      devices_published_at_ = std::chrono::steady_clock::now();
      for (const JobLease& lease : owned) SettleOwnedJob(lease, "the server restarted; resuming from the last checkpoint");
    }
    fence_.Start();
    scheduler_ = std::thread([this] { SchedulerLoop(); });
    return absl::OkStatus();
  }
  // A previous server's running jobs: their workers are gone (they die with the server's
  // process group or were killed); resume them from their last checkpoints.
  ASSIGN_OR_RETURN(const std::vector<v1::Job> left,
                   store_.JobsInStates({v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  {
    absl::MutexLock lock(&mu_);
    for (const v1::Job& job : left) {
      RETURN_IF_ERROR(SettleOrphan(job, "the server restarted during cancellation",
                                   "the server restarted; resuming from the last checkpoint"));
    }
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  return absl::OkStatus();
}

void JobManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    draining_ = true;
    for (auto& [id, r] : running_) {
      r->draining = true;
      r->TerminateAll(options_.cancel_grace_seconds);
    }
    // Workers checkpoint and exit; OnWorkerExit removes them. (In a fleet the lease thread
    // keeps their leases meanwhile.)
    const auto all_exited = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&all_exited), absl::Seconds(options_.cancel_grace_seconds + 10));
    stopping_ = true;
    wake_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
  fence_.Stop();
  std::vector<std::unique_ptr<WorkerProcess>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : reserved_) (void)store_.ReleaseJob(id);  // others may run them now
    reserved_.clear();
    finished.swap(finished_workers_);
    for (auto& [id, r] : running_) {
      for (Rank& k : r->ranks) {
        if (k.worker != nullptr) finished.push_back(std::move(k.worker));  // still alive: killed
      }
    }
    running_.clear();
    fence_.ForgetWorkers();
  }
  finished.clear();
  stopped_ = true;
  store_.StopListening();
  NotifyAllWatchers();
}

// ---------------------------------------------------------------------------------------------
// Jobs

namespace {

// The job an earlier CreateJob with this request's request_id created, if that call asked for
// the same job; ALREADY_EXISTS naming what differs if not: a request id reused for another job
// is a client bug, and answering with a job the client did not ask for would hide it.
absl::StatusOr<v1::Job> SameCreate(const v1::Job& earlier, const v1::CreateJobRequest& request) {
  std::string differs;
  if (!google::protobuf::util::MessageDifferencer::Equals(earlier.spec(), request.spec())) differs = "spec";
  else if (earlier.display_name() != request.display_name()) differs = "display_name";
  else if (earlier.priority() != request.priority()) differs = "priority";
  if (differs.empty()) return earlier;
  return absl::AlreadyExistsError(absl::StrCat("request_id: '", request.request_id(), "' already created ", earlier.id(),
                                               " with a different ", differs,
                                               "; a new job needs a new request_id"));
}

}  // namespace

absl::StatusOr<v1::Job> JobManager::CreateJob(const v1::CreateJobRequest& request, const Principal& caller) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down; not accepting jobs");
  }
  RETURN_IF_ERROR(CheckName("display_name", request.display_name(), /*required=*/false));
  // A retry of a create that already succeeded returns that job, whatever has happened since
  // (AIP-155): no second plan, no second limit check, no second job.
  const std::string& request_id = request.request_id();
  if (!request_id.empty()) {
    if (request_id.size() > 128 || request_id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                                "0123456789._-:") != std::string::npos) {
      return absl::InvalidArgumentError("request_id: 1 to 128 characters of A-Z a-z 0-9 . _ - :");
    }
    absl::StatusOr<v1::Job> earlier = store_.JobByRequest(caller.tenant, request_id);
    if (earlier.ok()) return SameCreate(*earlier, request);
    if (earlier.status().code() != absl::StatusCode::kNotFound) return earlier;
  }
  if (request.priority() < -1000 || request.priority() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("priority: must be in [-1000, 1000], got ", request.priority()));
  }
  std::string kind;
  ASSIGN_OR_RETURN(const JobSpec spec, admission_.ResolveSpec(request.spec(), caller, &kind));
  // In a fleet: the devices of every live replica.
  const Admission::KindCapacity capacity = admission_.CapacityOf(kind);
  const int64_t largest = capacity.largest;
  // The ranks of a data-parallel job run on one server's devices (their rendezvous is a file
  // in the job directory), one device each. Checked before planning, which may calibrate.
  const int workers = Workers(request.spec());
  if (workers > capacity.most_on_one_server) {
    return absl::FailedPreconditionError(absl::StrCat("spec: data_parallel.workers: ", workers,
                                                      " workers need as many ", kind, " devices; ",
                                                      fleet() ? "the replica with the most has " : "this server has ",
                                                      capacity.most_on_one_server));
  }
  ASSIGN_OR_RETURN(const v1::PlanJobResponse plan, admission_.Plan(spec, kind));
  if (plan.quota_bytes() > largest) {
    return absl::ResourceExhaustedError(absl::StrCat("spec: memory.quota: ", FormatBytes(plan.quota_bytes()),
                                                     " is more than the largest ", kind, " device holds (",
                                                     FormatBytes(largest), " beside its worker footprint)"));
  }
  if (!plan.feasible()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "spec: memory.quota: ", FormatBytes(plan.quota_bytes()), " cannot fit this job",
        spec.chunk_size > 0 ? absl::StrCat(" at memory.chunk_size ", spec.chunk_size) : "", "; the minimum is ",
        FormatBytes(plan.min_quota_bytes()), " (min_quota_bytes=", plan.min_quota_bytes(), ")"));
  }
  v1::Job job;
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("job"));
  job.set_id(id);
  job.set_display_name(request.display_name());
  job.set_tenant(caller.tenant);
  job.set_request_id(request_id);
  job.set_state(v1::JOB_STATE_QUEUED);
  *job.mutable_spec() = request.spec();
  job.set_priority(request.priority());
  job.set_quota_bytes(plan.quota_bytes());
  job.set_requested_quota_bytes(plan.quota_bytes());
  job.set_chunk_size(plan.chunk_size());
  job.set_mode(plan.mode());
  job.set_predicted_peak_bytes(plan.predicted_peak_bytes());
  job.set_min_quota_bytes(plan.min_quota_bytes());
  job.mutable_progress()->set_total_steps(plan.total_steps());
  *job.mutable_create_time() = Now();
  v1::JobEvent queued = Event("queued", absl::StrCat("quota ", FormatBytes(plan.quota_bytes()), ", chunk size ",
                                                         plan.chunk_size(), " (", plan.mode(), "), predicted peak ",
                                                         FormatBytes(plan.predicted_peak_bytes())));
  queued.set_state(v1::JOB_STATE_QUEUED);
  queued.set_quota_bytes(plan.quota_bytes());
  queued.set_chunk_size(plan.chunk_size());
  queued.set_predicted_peak_bytes(plan.predicted_peak_bytes());
  const absl::StatusOr<v1::Job> created =
      admission_.RecordWithinLimits(caller, plan.quota_bytes() * workers, job, queued);
  if (created.ok() && created->id() != id) return SameCreate(*created, request);  // a concurrent retry was first
  if (created.ok()) LogLifecycle(*created, queued, options_.replica_id);
  if (created.ok() && observer_ != nullptr) {
    absl::MutexLock lock(&mu_);
    queued.set_sequence(created->last_sequence());
    observer_->OnJobEvent(*created, queued);
  }
  Wake();
  return created;
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Job> job = store_.GetJob(id);
  if (job.ok() && !caller.Sees(job->tenant())) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return job;
}

absl::StatusOr<v1::ListJobsResponse> JobManager::ListJobs(const v1::ListJobsRequest& request, const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  std::vector<v1::JobState> states;
  for (int s : request.states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("states: unknown job state ", s));
    }
    states.push_back(static_cast<v1::JobState>(s));
  }
  ASSIGN_OR_RETURN(Page<v1::Job> page,
                   VisiblePage<v1::Job>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListJobs(states, size, token, Scope(caller)); },
                       [&](const v1::Job& job) { return caller.Sees(job.tenant()); }));
  v1::ListJobsResponse response;
  for (v1::Job& job : page.items) *response.add_jobs() = std::move(job);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::Status JobManager::DeleteJob(const std::string& id, const Principal& caller) {
  ASSIGN_OR_RETURN(const v1::Job job, GetJob(id, caller));
  RETURN_IF_ERROR(store_.DeleteJob(job.id()));
  // The record is gone, so nothing will use the directory again; a failure leaves files that
  // SweepCheckpoints cannot reach, so it is reported.
  std::error_code ec;
  fs::remove_all(fs::path(options_.data_dir) / "jobs" / job.id(), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("job ", id, " was deleted but its files were not: ", ec.message()));
  }
  std::fprintf(stderr, "%s\n", JobLogLine(id, "deleted").c_str());
  return absl::OkStatus();
}

absl::StatusOr<JobManager::JobLogs> JobManager::LogsOf(const std::string& id, const Principal& caller) {
  JobLogs logs;
  ASSIGN_OR_RETURN(logs.job, GetJob(id, caller));
  const fs::path dir = fs::path(options_.data_dir) / "jobs" / logs.job.id();
  for (int rank = 0; rank < Workers(logs.job.spec()); ++rank) {
    logs.paths.push_back((dir / WorkerLogName(rank)).string());
  }
  return logs;
}

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(id));
  if (!caller.Sees(job.tenant())) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(job.state()),
                                                      "; only queued or running jobs can be cancelled"));
  }
  if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  const auto it = running_.find(id);
  if (it != running_.end() && !it->second->lost) return CancelRunning(job, "");
  if (!fleet()) return CancelQueued(job, "cancelled while queued");
  // A fleet: the job is queued, or another replica runs it. Reads race with other replicas,
  // so a refused write means "look again".
  for (int attempt = 1;; ++attempt) {
    if (job.state() == v1::JOB_STATE_QUEUED) {
      absl::StatusOr<v1::Job> cancelled = CancelQueued(job, "cancelled while queued");
      if (cancelled.ok() || (cancelled.status().code() != absl::StatusCode::kAborted &&
                             cancelled.status().code() != absl::StatusCode::kFailedPrecondition)) {
        return cancelled;
      }
    }
    // Claimed or run by a replica (possibly this one, between a worker and its record): its
    // owner carries it out within a pass.
    absl::StatusOr<std::string> owner = store_.RequestCancel(id);
    if (owner.ok()) return job;
    if (owner.status().code() != absl::StatusCode::kFailedPrecondition) return owner.status();
    if (attempt == 3) {
      return absl::AbortedError(absl::StrCat("job ", id, " kept changing while being cancelled; try again"));
    }
    ASSIGN_OR_RETURN(job, store_.GetJob(id));
    if (IsTerminal(job.state())) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(job.state()),
                                                        "; only queued or running jobs can be cancelled"));
    }
    if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  }
}

absl::StatusOr<v1::Job> JobManager::CancelQueued(v1::Job job, const std::string& why) {
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.set_queue_position(0);
  *job.mutable_end_time() = Now();
  absl::StatusOr<v1::Job> cancelled = Record(job, Event("cancelled", why));
  if (cancelled.ok()) reserved_.erase(job.id());
  return cancelled;
}

absl::StatusOr<v1::Job> JobManager::CancelRunning(v1::Job job, const std::string& why) {
  Running& r = *running_.at(job.id());
  job.set_state(v1::JOB_STATE_CANCELLING);
  r.cancelling = true;
  r.TerminateAll(options_.cancel_grace_seconds);
  return Record(job, Event("cancelling", "the worker finishes its step, writes a checkpoint and stops" + why));
}

absl::StatusOr<std::vector<v1::JobEvent>> JobManager::Events(const std::string& job_id, int64_t after_sequence,
                                                              int limit) {
  return store_.ListEvents(job_id, after_sequence, limit);
}

int64_t JobManager::Watch(const std::string& job_id, std::function<void()> notify) {
  absl::MutexLock lock(&watch_mu_);
  const int64_t handle = next_watch_++;
  watchers_[handle] = {job_id, std::move(notify)};
  return handle;
}

void JobManager::Unwatch(int64_t handle) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(handle);
}

void JobManager::NotifyWatchers(const std::string& job_id) {
  std::vector<std::function<void()>> to_call;
  {
    absl::MutexLock lock(&watch_mu_);
    for (const auto& [handle, w] : watchers_) {
      if (w.first == job_id) to_call.push_back(w.second);
    }
  }
  for (const auto& f : to_call) f();
}

void JobManager::NotifyAllWatchers() {
  std::vector<std::function<void()>> to_call;
  {
    absl::MutexLock lock(&watch_mu_);
    for (const auto& [handle, w] : watchers_) to_call.push_back(w.second);
  }
  for (const auto& f : to_call) f();
}

void JobManager::OnStoreNotification(const StoreNotification& n) {
  switch (n.kind) {
    case StoreNotification::Kind::kEvent:
      NotifyWatchers(n.job_id);  // often this replica's own event: then a spurious wake-up
      break;
    case StoreNotification::Kind::kQueued:           // claimable now
    case StoreNotification::Kind::kCancelRequested:  // perhaps ours: the pass finds out
      poke_ = true;
      break;
    case StoreNotification::Kind::kResync:
      NotifyAllWatchers();
      poke_ = true;
      break;
  }
}

absl::StatusOr<v1::Job> JobManager::Record(v1::Job job, v1::JobEvent event) {
  event.set_state(job.state());
  if (event.kind() == "progress" || event.kind() == "eval") *event.mutable_progress() = job.progress();
  event.set_device(job.device());
  const v1::JobEvent recorded = event;
  const std::string job_id = job.id();
  absl::StatusOr<v1::Job> updated = store_.UpdateJob(std::move(job), std::move(event));
  NoteStoreWrite(updated.status(), "recording job " + job_id + "'s " + recorded.kind() + " event");
  if (!updated.ok()) return updated.status();
  v1::Job stored = *std::move(updated);
  LogLifecycle(stored, recorded, options_.replica_id);
  if (observer_ != nullptr) {
    v1::JobEvent with_sequence = recorded;
    with_sequence.set_sequence(stored.last_sequence());
    observer_->OnJobEvent(stored, with_sequence);
  }
  NotifyWatchers(stored.id());
  return stored;
}

absl::Status JobManager::SettleOrphan(v1::Job job, const std::string& why_cancelled, const std::string& why_requeued) {
  KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / job.id()).string());
  const bool cancelling = job.state() == v1::JOB_STATE_CANCELLING;
  job.set_state(cancelling ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_QUEUED);
  ClearPlacement(&job);
  if (cancelling) *job.mutable_end_time() = Now();
  return Record(job, Event(cancelling ? "cancelled" : "requeued", cancelling ? why_cancelled : why_requeued)).status();
}

void JobManager::ReconcileOrphans(const std::vector<v1::Job>& active) {
  for (const v1::Job& job : active) {
    if (job.state() == v1::JOB_STATE_QUEUED || running_.count(job.id())) continue;
    std::fprintf(stderr, "slimd: job %s is %s in the store but has no worker (its end was not recorded); settling it\n",
                 job.id().c_str(), StateName(job.state()).c_str());
    (void)SettleOrphan(job, "its worker is gone and its end could not be recorded; the cancellation is complete",
                       "its worker is gone and its end could not be recorded; resuming from the last checkpoint");
  }
}

void JobManager::NoteStoreWrite(const absl::Status& status, const std::string& what) {
  // Another replica's ownership (fleets) is an answer, not a failing store.
  const bool failed = !status.ok() && status.code() != absl::StatusCode::kFailedPrecondition &&
                      status.code() != absl::StatusCode::kAborted && status.code() != absl::StatusCode::kNotFound;
  absl::MutexLock lock(&store_health_mu_);
  if (failed) {
    if (store_error_.empty()) std::fprintf(stderr, "slimd: store writes fail: %s: %s\n", what.c_str(), status.ToString().c_str());
    store_error_ = what + ": " + std::string(status.message());
  } else if (status.ok() && !store_error_.empty()) {
    std::fprintf(stderr, "slimd: store writes succeed again\n");
    store_error_.clear();
  }
}

std::string JobManager::store_error() const {
  absl::MutexLock lock(&store_health_mu_);
  return store_error_;
}

v1::ListDevicesResponse JobManager::ListDevices() {
  absl::MutexLock lock(&mu_);
  return DevicesLocked();
}

std::vector<v1::Job> JobManager::JobsForStatus(int recent) {
  std::vector<v1::Job> out;
  absl::StatusOr<std::vector<v1::Job>> active =
      store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING});
  if (active.ok()) out.assign(active->rbegin(), active->rend());
  absl::StatusOr<Page<v1::Job>> ended =
      store_.ListJobs({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}, recent, "");
  if (ended.ok()) out.insert(out.end(), ended->items.begin(), ended->items.end());
  return out;
}

v1::ListDevicesResponse JobManager::DevicesLocked() {
  v1::ListDevicesResponse response = DeclaredDevices();
  // What the OS or the driver attributes to one worker process on `d`; -1 where it cannot tell.
  const auto ProcessBytes = [](const DeviceCapacity& d, pid_t pid) -> int64_t {
    return d.kind == "cuda" ? NvmlProcessBytes(d.pci_bus_id, pid) : ResidentBytes(pid);
  };
  for (int i = 0; i < response.devices_size(); ++i) {
    const DeviceCapacity& d = options_.devices[i];
    v1::Device* device = response.mutable_devices(i);
    device->set_description(d.kind == "cpu" ? "CPU memory declared to the scheduler" : "CUDA GPU");
    for (const auto& [id, r] : running_) {
      const auto on_device = std::find_if(r->ranks.begin(), r->ranks.end(),
                                          [&](const Rank& k) { return k.device == d.name; });
      if (on_device == r->ranks.end()) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(id);
      if (!job.ok()) continue;
      device->add_job_ids(id);
      device->set_committed_bytes(device->committed_bytes() + ProcessCost(d, job->quota_bytes()));
      const int64_t process = on_device->worker ? ProcessBytes(d, on_device->worker->pid()) : 0;  // 0: exited
      device->add_job_process_bytes(process);
      if (device->process_bytes() >= 0) device->set_process_bytes(process < 0 ? -1 : device->process_bytes() + process);
      if (on_device == r->ranks.begin()) {  // a data-parallel job's measurements are rank 0's
        device->set_observed_bytes(device->observed_bytes() + job->observed_peak_bytes());
        device->set_current_bytes(device->current_bytes() + job->progress().current_bytes());
      }
    }
    for (const auto& [id, held] : reservations_) {
      if (held.device != d.name) continue;
      device->add_reservations(absl::StrCat(id, " (", FormatBytes(held.bytes), ")"));
      device->set_committed_bytes(device->committed_bytes() + ProcessCost(d, held.bytes));
    }
  }
  return response;
}

}  // namespace slim::server
