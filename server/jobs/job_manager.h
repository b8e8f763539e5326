// The core of slimd (DESIGN.md §3): job admission through the planner, the job state machine,
// placement through the scheduler, one supervised worker process per running job, recording
// every worker event durably, shrink-to-fit, cancellation, retries, restart recovery, and
// datasets and models. Knows nothing of gRPC: methods take and return the API's messages and
// absl::Status; the RPC layer (server/api) is a thin adapter over it.
//
// Thread-safety: every public method may be called from any thread. Long work (calibrating the
// planner for a new model shape, generation) runs on the calling thread, so the RPC layer calls
// those methods from its own worker threads, never from gRPC's callback threads.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/job_spec.h"
#include "engine/worker_events.h"
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
  int64_t max_dataset_bytes = int64_t{1} << 30;
  std::string calibration_cache_dir;
  double scheduler_interval_seconds = 1.0;  // periodic pass besides the event-driven ones
  // Per-tenant limits for user tokens (admins are exempt); 0 = no limit. Exceeding one is
  // RESOURCE_EXHAUSTED naming the limit.
  int tenant_max_jobs = 0;                 // queued, running and cancelling jobs
  int64_t tenant_max_quota_bytes = 0;      // sum of the memory quotas of those jobs
  int64_t tenant_max_dataset_bytes = 0;    // total size of the tenant's datasets
};

class JobManager {
 public:
  // `observer` (optional) outlives the manager.
  JobManager(Store& store, JobManagerOptions options, JobObserver* observer = nullptr);
  ~JobManager();  // Shutdown() if not done

  // Re-queues jobs a previous server left RUNNING or CANCELLING (they resume from their last
  // checkpoints), finishes cancellations of jobs whose workers are gone, starts scheduling.
  absl::Status Start();
  // Two-phase shutdown: refuse new jobs (UNAVAILABLE), SIGTERM every worker (each writes a
  // checkpoint; its job goes back to QUEUED so the next start resumes it), wait up to
  // cancel_grace_seconds, then SIGKILL what is left.
  void Shutdown();

  // Tenancy: every method below acts for `caller`. A job, dataset or model belongs to the tenant
  // that created it; others get NOT_FOUND for it (its existence is not revealed) and do not see
  // it in lists; admins see everything; models without an owner (admin imports) are shared.
  absl::StatusOr<v1::Job> CreateJob(const v1::CreateJobRequest& request, const Principal& caller);
  absl::StatusOr<v1::Job> GetJob(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request, const Principal& caller);
  absl::StatusOr<v1::Job> CancelJob(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::PlanJobResponse> PlanJob(const v1::JobSpec& spec, const Principal& caller);
  v1::ListDevicesResponse ListDevices();
  // Active jobs (queued, running, cancelling) and the most recent `recent` others, newest first.
  std::vector<v1::Job> JobsForStatus(int recent);
  // Events of a job after `after_sequence` (at most `limit`), for WatchJob.
  absl::StatusOr<std::vector<v1::JobEvent>> Events(const std::string& job_id, int64_t after_sequence, int limit);

  // Calls `notify` whenever job `job_id` records an event, on the recording thread with the
  // manager's lock held: it must be quick (e.g. wake a reactor) and may call only Events().
  // Returns a handle for Unwatch.
  int64_t Watch(const std::string& job_id, std::function<void()> notify);
  void Unwatch(int64_t handle);

  // Datasets: the RPC layer streams the upload into `temp_path` (under data_dir/tmp), then
  // calls this to verify size and checksum and register it. The temp file is consumed.
  absl::StatusOr<v1::Dataset> AddDataset(const v1::UploadDatasetHeader& header, const std::string& temp_path,
                                         const Principal& caller);
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListDatasetsResponse> ListDatasets(const v1::ListDatasetsRequest& request, const Principal& caller);
  absl::Status DeleteDataset(const std::string& id, const Principal& caller);
  std::string TempPath();  // a fresh file name under data_dir/tmp
  int64_t max_dataset_bytes() const { return options_.max_dataset_bytes; }

  // Models.
  // Admins only (enforced by the RPC layer); imported models are shared.
  absl::StatusOr<v1::Model> ImportModel(const v1::ImportModelRequest& request);
  absl::StatusOr<v1::Model> GetModel(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListModelsResponse> ListModels(const v1::ListModelsRequest& request, const Principal& caller);
  absl::StatusOr<std::string> ModelPath(const std::string& id, const Principal& caller);
  // Samples from a model; `emit` receives text pieces as they are drawn and returns false to
  // stop early (the client went away).
  absl::Status Generate(const v1::GenerateRequest& request, const Principal& caller,
                        const std::function<bool(const std::string&)>& emit);

 private:
  struct Running;  // a job with a live worker

  // Builds the engine's JobSpec from the API's (ids resolved to files), validating every field;
  // the datasets and model must be visible to `caller`.
  absl::StatusOr<JobSpec> ResolveSpec(const v1::JobSpec& spec, const Principal& caller, std::string* device_kind);
  // The planner's answer for `spec` on a device of `kind` (the quota policy applied).
  absl::StatusOr<v1::PlanJobResponse> Plan(const JobSpec& spec, const std::string& kind, bool quota_given);

  void SchedulerLoop();
  void SchedulePass();
  absl::Status Launch(const std::string& job_id, const std::string& device);
  void OnWorkerEvent(const std::string& job_id, const TrainingEvent& event);
  void OnWorkerExit(const std::string& job_id, int attempt, const struct WorkerExit& exit);
  // Stores job + event and wakes the job's watchers. Caller holds mu_.
  absl::StatusOr<v1::Job> Record(v1::Job job, v1::JobEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyWatchers(const std::string& job_id);
  void Wake();

  v1::ListDevicesResponse DevicesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store& store_;
  const JobManagerOptions options_;
  JobObserver* const observer_;

  // Checks tenant limits against the store; held from the check to the insert, so two requests
  // of one tenant cannot both pass a limit that only one fits.
  absl::Status CheckJobLimits(const Principal& caller, int64_t quota_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admission_mu_);
  absl::Status CheckDatasetLimit(const Principal& caller, int64_t size_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admission_mu_);
  absl::Mutex admission_mu_;

  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  std::thread scheduler_;
  // Workers that exited, destroyed outside their own reader thread.
  std::vector<std::unique_ptr<WorkerProcess>> finished_workers_ ABSL_GUARDED_BY(mu_);

  absl::Mutex watch_mu_;
  int64_t next_watch_ ABSL_GUARDED_BY(watch_mu_) = 1;
  std::map<int64_t, std::pair<std::string, std::function<void()>>> watchers_ ABSL_GUARDED_BY(watch_mu_);

  std::atomic<int64_t> temp_counter_{0};
};

}  // namespace slim::server
