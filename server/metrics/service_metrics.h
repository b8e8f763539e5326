// slimd's Prometheus metrics (docs/operations.md lists them): jobs by state and outcome, the
// queue, devices, each active job, training throughput, worker restarts and RPCs. Fed by the
// JobManager (as its JobObserver) and by the RPC interceptor; served by MetricsHttpServer.
//
// Naming follows Prometheus practice: slim_ prefix, base units, _total counters, histograms for
// durations. Per-job series exist only while the job is active.
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/jobs/job_manager.h"

namespace slim::server {

inline constexpr char kSlimVersion[] = "0.5.0";

class ServiceMetrics : public JobObserver {
 public:
  ServiceMetrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void OnJobEvent(const v1::Job& job, const v1::JobEvent& event) override;
  void OnSchedulePass(const v1::ListDevicesResponse& devices, const std::vector<v1::Job>& queued,
                      const std::map<v1::JobState, int64_t>& jobs_by_state) override;
  // One finished RPC: `method` is the short name ("CreateJob"), `code` the status code name.
  void OnRpc(const std::string& method, const std::string& code, double seconds);

 private:
  struct JobSeries {
    prometheus::Gauge *quota, *predicted, *observed, *chunk, *tokens_per_second, *loss, *progress, *blas_threads;
    int64_t tokens = 0;  // last reported, for the tokens-trained counter
  };
  struct DeviceSeries {
    prometheus::Gauge *capacity, *committed, *footprint, *observed, *current, *jobs, *process;
  };
  JobSeries& SeriesFor(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSeries(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& jobs_by_state_;
  prometheus::Counter& jobs_created_;
  prometheus::Family<prometheus::Counter>& jobs_finished_;
  prometheus::Gauge& queue_length_;
  prometheus::Histogram& queue_wait_;
  prometheus::Family<prometheus::Gauge>& device_capacity_;
  prometheus::Family<prometheus::Gauge>& device_committed_;
  prometheus::Family<prometheus::Gauge>& device_footprint_;
  prometheus::Family<prometheus::Gauge>& device_process_;
  prometheus::Family<prometheus::Gauge>& device_observed_;
  prometheus::Family<prometheus::Gauge>& device_current_;
  prometheus::Family<prometheus::Gauge>& device_jobs_;
  prometheus::Family<prometheus::Gauge>& job_quota_;
  prometheus::Family<prometheus::Gauge>& job_predicted_;
  prometheus::Family<prometheus::Gauge>& job_observed_;
  prometheus::Family<prometheus::Gauge>& job_chunk_;
  prometheus::Family<prometheus::Gauge>& job_tokens_per_second_;
  prometheus::Family<prometheus::Gauge>& job_loss_;
  prometheus::Family<prometheus::Gauge>& job_progress_;
  prometheus::Family<prometheus::Gauge>& job_blas_threads_;
  prometheus::Family<prometheus::Histogram>& step_duration_;  // by device
  // slim_job_failed_time_seconds: jobs that failed here, by job id, device and error code, for
  // an alert that names them; each kept an hour, at most kFailedJobsKept (the newest).
  prometheus::Family<prometheus::Gauge>& job_failed_;
  prometheus::Counter& tokens_trained_;
  prometheus::Counter& worker_restarts_;
  prometheus::Family<prometheus::Counter>& rpc_requests_;
  prometheus::Family<prometheus::Histogram>& rpc_duration_;

  absl::Mutex mu_;
  std::map<std::string, JobSeries> jobs_ ABSL_GUARDED_BY(mu_);
  struct FailedSeries {
    prometheus::Gauge* gauge;
    int64_t time;  // Unix seconds of the failure (its job's end time)
  };
  std::map<std::string, FailedSeries> failed_ ABSL_GUARDED_BY(mu_);
  void ForgetOldFailures(int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::string, DeviceSeries> devices_ ABSL_GUARDED_BY(mu_);
  std::map<v1::JobState, prometheus::Gauge*> states_ ABSL_GUARDED_BY(mu_);
};

}  // namespace slim::server
