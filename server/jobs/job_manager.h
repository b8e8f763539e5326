// The core of slimd (docs/service.md): the job state machine, placement through the scheduler,
// one supervised worker process per running job, recording every worker event durably,
// shrink-to-fit, cancellation, retries, restart recovery and fleets. It owns the two parts it
// builds on, each a class of its own: admission (admission.h: specs, plans, tenant job limits)
// and the catalog (catalog.h: datasets, models, generation), and lends them device memory as
// their DeviceLedger (device_ledger.h). Data-parallel jobs (spec.data_parallel.workers = N > 1) run as N worker
// processes on N devices of this server, placed together and ended together; the job's events
// come from rank 0. Knows nothing of gRPC: methods take and return the API's messages and
// absl::Status; the RPC layer (server/api) is a thin adapter over it.
//
// Thread-safety: every public method may be called from any thread. Long work (calibrating the
// planner for a new model shape, generation) runs on the calling thread, so the RPC layer calls
// those methods from its own worker threads, never from gRPC's callback threads.
//
// Fleets (options.replica_id set; the store is a PostgresStore opened with the same id; see
// docs/operations.md "Running a fleet"): several managers, one per slimd replica, share the
// store and the data directory, each with its own devices.
//  - Scheduling: a pass considers every QUEUED job but launches one on its devices only after
//    Store::ClaimJob succeeded (a lost claim means another replica took it). Shrink-to-fit
//    claims the job it makes room for first (a reservation), so that two replicas never shrink
//    their jobs for the same one; a reservation that is not needed any more is released.
//  - Leases: every pass renews this replica's leases (Store::RenewLeases) and reconciles: a
//    job it runs that is no longer its own (taken over) loses its worker at once, a cancel
//    request from another replica is carried out, and a job it owns without a worker (its end
//    could not be recorded) is requeued. A lease thread renews too, independently of passes.
//  - Self-fencing: if no renewal has succeeded for 2/3 of the lease, a fence thread SIGKILLs
//    every worker (their jobs are requeued once the store can be written), so that a replica
//    cut off from the database stops writing into job directories before its leases can
//    expire and another replica resumes those jobs there.
//  - Takeover: each pass takes over RUNNING/CANCELLING jobs whose owner's lease expired and
//    requeues them (event `requeued` naming the replica) or finishes their cancellation; any
//    replica then claims them and they resume from their checkpoints in the shared directory.
//    Before a worker starts, a worker of an earlier attempt still alive on this machine
//    (jobs/<id>/worker.pid) is killed.
//  - Start() recovers only the jobs this replica id owns, not every RUNNING job.
//  - Watchers are woken by the store's notifications (Store::Listen), so WatchJob through any
//    replica streams the events another one records. CancelJob of a job another replica runs
//    sets its cancel request (Store::RequestCancel); the owner acts on it within a pass, and
//    the returned job still shows the state before.
//  - Uploads go to tmp/<replica id>/, and Start() clears only that folder.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/job_spec.h"
#include "base/worker_events.h"
#include "server/jobs/admission.h"
#include "server/jobs/catalog.h"
#include "server/jobs/device_ledger.h"
#include "server/jobs/lease_fence.h"
#include "server/supervise/engine_commands.h"
#include "server/auth/principal.h"
#include "server/jobs/store.h"
#include "server/sched/scheduler.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

class WorkerProcess;

// Told about everything the manager records, e.g. to keep metrics. Calls come from the
// manager's threads with its lock held: implementations must be quick and must not call back
// into the JobManager.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // After each event is stored, with the job as stored.
  virtual void OnJobEvent(const v1::Job& job, const v1::JobEvent& event) = 0;
  // After each scheduling pass: the devices (committed quotas, jobs) and the queued jobs.
  virtual void OnSchedulePass(const v1::ListDevicesResponse& devices, const std::vector<v1::Job>& queued,
                              const std::map<v1::JobState, int64_t>& jobs_by_state) = 0;
};

struct JobManagerOptions {
  std::string data_dir;       // datasets/, models/, jobs/<id>/ live here
  std::string worker_binary;  // slim-train
  std::vector<DeviceCapacity> devices;
  // Checkpoint cadence when a spec leaves it at 0, so that crashes and restarts lose little.
  int checkpoint_every = 50;
  double cancel_grace_seconds = 30;  // SIGTERM → SIGKILL
  int max_retries = 2;               // crashed workers restarted from their last checkpoint
  // Workers run this many niceness steps below slimd (0..19), so that on a machine whose cores
  // the workers keep busy, RPCs and WatchJob streams still get the CPU as soon as they need it
  // (docs/operations.md, "Load"). slimd needs little CPU, so training loses little.
  int worker_nice = 10;
  // CPU workers' BLAS thread pools (OpenBLAS: every core each, by default) spin against each
  // other when several workers share the machine; the manager divides this many cores among
  // the live CPU workers, telling each its share at launch and whenever the count changes
  // (docs/service.md, "CPU threads"). 0: the cores this process may use (AvailableCpuCores:
  // affinity and cgroup CPU limit); -1: leave the workers alone.
  int worker_cpu_threads = 0;
  int64_t max_dataset_bytes = int64_t{1} << 30;
  // Device memory reserved for one Generate (its slim-train process is capped there); 0: the
  // model file's size × 2 + 16 MiB (docs/service.md, "Generation").
  int64_t generate_quota_bytes = 0;
  std::string calibration_cache_dir;
  double scheduler_interval_seconds = 1.0;  // periodic pass besides the event-driven ones
  // Per-tenant limits for user tokens (admins are exempt); 0 = no limit. Exceeding one is
  // RESOURCE_EXHAUSTED naming the limit.
  int tenant_max_jobs = 0;                 // queued, running and cancelling jobs
  int64_t tenant_max_quota_bytes = 0;      // sum of the memory quotas of those jobs
  int tenant_max_calls = 0;                // plan/create/import/generate calls at once (Admission::BeginCall)
  int64_t tenant_max_dataset_bytes = 0;    // total size of the tenant's datasets
  // Fleets (see the class comment): this replica's id, "" for a single slimd; and how long a
  // claim lasts without renewal. Renewals happen about every second (passes) and every
  // lease/4 (the lease thread); self-fencing at 2/3 of it.
  std::string replica_id;
  double lease_seconds = 15;
  // Checkpoints of jobs that ended longer ago than this are deleted (their records, logs and
  // output models stay); 0 keeps them until the job is deleted (docs/operations.md, "Disk").
  double checkpoint_retention_seconds = 0;
};

class JobManager : private DeviceLedger {
 public:
  // `observer` (optional) outlives the manager.
  JobManager(Store& store, JobManagerOptions options, JobObserver* observer = nullptr);
  ~JobManager();  // Shutdown() if not done

  // Re-queues jobs a previous server left RUNNING or CANCELLING (they resume from their last
  // checkpoints), finishes cancellations of jobs whose workers are gone, starts scheduling. In
  // a fleet only the jobs this replica id owns, and it starts listening to the store first.
  absl::Status Start();
  // Two-phase shutdown: refuse new jobs (UNAVAILABLE), SIGTERM every worker (each writes a
  // checkpoint; its job goes back to QUEUED so the next start resumes it), wait up to
  // cancel_grace_seconds, then SIGKILL what is left. Then every watcher is notified once more
  // with stopped() true, so that streams deliver the last events and end.
  void Shutdown();
  // True once Shutdown has recorded every job's last event: nothing more will happen here.
  bool stopped() const { return stopped_.load(); }
  // Why the newest write to the store failed, while writes fail ("" when they succeed): slimd
  // reports NOT_SERVING on health meanwhile. Logged once per outage.
  std::string store_error() const;

  // Tenancy: every method below acts for `caller`. A job, dataset or model belongs to the tenant
  // that created it; others get NOT_FOUND for it (its existence is not revealed) and do not see
  // it in lists; admins see everything; models without an owner (admin imports) are shared.
  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& request, const Principal& caller);
  absl::StatusOr<v1::Job> GetJob(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request, const Principal& caller);
  absl::StatusOr<v1::Job> CancelJob(const std::string& id, const Principal& caller);
  // An ended job's record and events (Store::DeleteJob), then its directory: worker logs and
  // checkpoints. Its output model stays.
  absl::Status DeleteJob(const std::string& id, const Principal& caller);
  // The worker log of each rank of the job (index = rank), whether or not written yet, and the
  // job as stored.
  struct JobLogs {
    v1::Job job;
    std::vector<std::string> paths;
  };
  absl::StatusOr<JobLogs> LogsOf(const std::string& id, const Principal& caller);
  // Plan processes started so far (the rest were answered from the cache), for tests.
  int64_t plan_processes() const { return engine_.plan_processes(); }
  v1::ListDevicesResponse ListDevices();
  // In a fleet, every live replica's devices with their jobs as the replica last published them
  // (this one's included; each publishes every lease/4); empty for a single slimd.
  std::vector<v1::ListDevicesResponse> FleetDevices() override;
  // Active jobs (queued, running, cancelling) and the most recent `recent` others, newest first.
  std::vector<v1::Job> JobsForStatus(int recent);
  // Events of a job after `after_sequence` (at most `limit`), for WatchJob.
  absl::StatusOr<std::vector<v1::JobEvent>> Events(const std::string& job_id, int64_t after_sequence, int limit);

  // Calls `notify` whenever job `job_id` records an event (in a fleet: on any replica), on the
  // recording thread with the manager's lock held or on the store's listening thread: it must
  // be quick (e.g. wake a reactor) and may call only Events(). Spurious calls happen.
  // Returns a handle for Unwatch.
  int64_t Watch(const std::string& job_id, std::function<void()> notify);
  void Unwatch(int64_t handle);

  // Datasets, models and generation (catalog.h); admission's plans (admission.h).
  Catalog& catalog() { return catalog_; }
  Admission& admission() { return admission_; }

 private:
  struct Rank;     // one worker process of a running job
  struct Running;  // a job with live workers
  static bool OwnFailure(const Rank& rank);


  void SchedulerLoop();
  void SchedulePass();
  // Deletes the checkpoints of jobs that ended more than checkpoint_retention_seconds ago.
  void SweepCheckpoints();
  // Launches the job's workers: one on devices[0], or for a data-parallel job one rank per
  // device, joined through a new rendezvous file in the job directory. An error means the job
  // could not start (the caller fails it); a start the store refused to record (the job is not
  // ours any more) ends the new workers and returns OK.
  absl::Status Launch(const std::string& job_id, const std::vector<std::string>& devices)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A worker's event. Ranks other than 0 of a data-parallel job contribute their plans and
  // warnings; a rank's failure is held until the whole group has exited.
  void OnWorkerEvent(const std::string& job_id, int rank, const TrainingEvent& event);
  // A worker exited. A data-parallel group ends when its last rank exits: then its outcome is
  // recorded as one job's (docs/worker-protocol.md, "How slimd runs a data-parallel job").
  void OnWorkerExit(const std::string& job_id, int attempt, int rank, const struct WorkerExit& exit);
  // A single slimd: a RUNNING or CANCELLING job among `active` (the store's, read by the pass)
  // without a worker here (its end could not be recorded: a full disk, a store error) is
  // settled every pass, as a restart would: requeued, or its cancellation completed.
  void ReconcileOrphans(const std::vector<v1::Job>& active) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SettleOrphan(v1::Job job, const std::string& why_cancelled, const std::string& why_requeued)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NoteStoreWrite(const absl::Status& status, const std::string& what);
  // Stores job + event and wakes the job's watchers. Caller holds mu_.
  absl::StatusOr<v1::Job> Record(v1::Job job, v1::JobEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CANCELLING: SIGTERM to the worker, which checkpoints and stops. `why` ends the event's message.
  absl::StatusOr<v1::Job> CancelRunning(v1::Job job, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CANCELLED straight from QUEUED.
  absl::StatusOr<v1::Job> CancelQueued(v1::Job job, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Gives every live CPU worker its share of options_.worker_cpu_threads (set_threads).
  void BalanceCpuThreads() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyWatchers(const std::string& job_id);
  void NotifyAllWatchers();
  void Wake();

  // Fleets (see the class comment).
  bool fleet() const { return !options_.replica_id.empty(); }
  absl::Duration Lease() const { return absl::Seconds(options_.lease_seconds); }
  // Renews this replica's leases and reconciles running_ and reserved_ with them. False if the
  // store could not be reached: then nothing may be launched.
  bool RenewAndReconcile() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A job this replica owns but runs no worker for: requeued (RUNNING), finished (CANCELLING,
  // or a cancel request), released (QUEUED). `why` is the requeue's message.
  void SettleOwnedJob(const JobLease& lease, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeOverExpiredJobs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Claims the jobs that the decision's shrinks make room for; drops shrinks whose job another
  // replica holds.
  void ReserveForShrinks(std::vector<ShrinkOrder>* shrinks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases reservations that neither a placement of this pass nor a pending shrink needs.
  void ReleaseUnneededReservations(const std::set<std::string>& placed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnStoreNotification(const StoreNotification& notification);
  std::string TempDir() const;  // tmp/, or tmp/<replica id>/ in a fleet

  v1::ListDevicesResponse DevicesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // DeviceLedger. Reservations are device memory lent outside jobs (a calibration, a
  // generation): counted like a running job that is neither shrunk nor grown, by the scheduler
  // and in ListDevices, until the hold is destroyed.
  v1::ListDevicesResponse DeclaredDevices() const override;
  absl::StatusOr<std::unique_ptr<DeviceHold>> Reserve(const std::string& kind, int64_t bytes,
                                                      const std::string& purpose) override;
  struct Reservation {
    std::string device;
    int64_t bytes = 0;
    std::string purpose;  // e.g. "generate"
  };
  class ReservationHold;
  // Quota committed per device: running jobs (a growing job's larger quota) and reservations.
  std::map<std::string, int64_t> CommittedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store& store_;
  const JobManagerOptions options_;
  JobObserver* const observer_;
  // The cores to divide among CPU workers (read once: affinity and cgroup limits at start);
  // 0 when the manager leaves their threads alone.
  const int cpu_thread_budget_;


  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> stopped_{false};
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  // Set without mu_ (store notifications must not wait for a pass); read by the scheduler's
  // wait, which sees it at the next release of mu_ or after its interval.
  std::atomic<bool> poke_{false};
  std::thread scheduler_;
  // Fleets: QUEUED jobs this replica claimed to shrink running jobs for.
  std::set<std::string> reserved_ ABSL_GUARDED_BY(mu_);
  // Fleets: when this replica last published its devices (Store::PublishDevices).
  std::chrono::steady_clock::time_point devices_published_at_ ABSL_GUARDED_BY(mu_);
  // Queued jobs whose "cannot be placed" warning was recorded in this run.
  std::set<std::string> never_placeable_ ABSL_GUARDED_BY(mu_);

  // Fleets: the lease and fence threads.
  LeaseFence fence_;
  // Workers that exited, destroyed outside their own reader thread.
  std::vector<std::unique_ptr<WorkerProcess>> finished_workers_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex store_health_mu_;
  std::string store_error_ ABSL_GUARDED_BY(store_health_mu_);

  absl::Mutex watch_mu_;
  int64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;
  std::map<int64_t, std::pair<std::string, std::function<void()>>> watchers_ ABSL_GUARDED_BY(watch_mu_);

  std::map<std::string, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  int64_t next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  // Tensor work (planning, model checks, generation) runs in slim-train subprocesses.
  EngineCommands engine_;
  Catalog catalog_;
  Admission admission_;
};

}  // namespace slim::server
