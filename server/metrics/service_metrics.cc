#include "server/metrics/service_metrics.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace slim::server {
namespace {

// slim_job_failed_time_seconds keeps a failed job this long, and at most this many.
constexpr int64_t kFailedJobsSeconds = 3600;
constexpr size_t kFailedJobsKept = 100;

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

std::string Lower(v1::JobState s) {
  std::string name = v1::JobState_Name(s).substr(std::strlen("JOB_STATE_"));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

bool IsActive(v1::JobState s) {
  return s == v1::JOB_STATE_QUEUED || s == v1::JOB_STATE_RUNNING || s == v1::JOB_STATE_CANCELLING;
}

// Seconds: 10 ms .. ~3 h, doubling.
Histogram::BucketBoundaries SecondsBuckets(double first, int count) {
  Histogram::BucketBoundaries b;
  for (int i = 0; i < count; ++i) b.push_back(first * (1 << i));
  return b;
}

}  // namespace

ServiceMetrics::ServiceMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      jobs_by_state_(BuildGauge().Name("slim_jobs").Help("Jobs in each state").Register(*registry_)),
      jobs_created_(BuildCounter().Name("slim_jobs_created_total").Help("Jobs accepted by CreateJob").Register(*registry_).Add({})),
      jobs_finished_(BuildCounter().Name("slim_jobs_finished_total").Help("Jobs that ended, by outcome").Register(*registry_)),
      queue_length_(BuildGauge().Name("slim_queue_length").Help("Jobs waiting to be placed").Register(*registry_).Add({})),
      queue_wait_(BuildHistogram().Name("slim_queue_wait_seconds").Help("Time from creation to first placement")
                      .Register(*registry_).Add({}, SecondsBuckets(0.1, 18))),
      device_capacity_(BuildGauge().Name("slim_device_capacity_bytes").Help("Memory the scheduler may commit on a device").Register(*registry_)),
      device_committed_(BuildGauge().Name("slim_device_committed_bytes").Help("Quotas of the jobs and reservations on a device plus a worker footprint per process").Register(*registry_)),
      device_footprint_(BuildGauge().Name("slim_device_worker_footprint_bytes").Help("Memory each worker process on a device uses beyond its quota, committed beside it").Register(*registry_)),
      device_process_(BuildGauge().Name("slim_device_process_bytes").Help("Memory the system attributes to the worker processes on a device (resident memory on CPU, NVML on GPUs); -1 where unknown").Register(*registry_)),
      device_observed_(BuildGauge().Name("slim_device_observed_peak_bytes").Help("Sum of the observed peaks of the jobs on a device").Register(*registry_)),
      device_current_(BuildGauge().Name("slim_device_current_bytes").Help("Tensor memory in use by the jobs on a device at their last reports").Register(*registry_)),
      device_jobs_(BuildGauge().Name("slim_device_jobs").Help("Jobs placed on a device").Register(*registry_)),
      job_quota_(BuildGauge().Name("slim_job_quota_bytes").Help("An active job's memory quota").Register(*registry_)),
      job_predicted_(BuildGauge().Name("slim_job_predicted_peak_bytes").Help("The planner's predicted peak for an active job").Register(*registry_)),
      job_observed_(BuildGauge().Name("slim_job_observed_peak_bytes").Help("An active job's measured peak").Register(*registry_)),
      job_chunk_(BuildGauge().Name("slim_job_chunk_size").Help("An active job's SLiM chunk size (tokens)").Register(*registry_)),
      job_tokens_per_second_(BuildGauge().Name("slim_job_tokens_per_second").Help("An active job's training throughput").Register(*registry_)),
      job_loss_(BuildGauge().Name("slim_job_loss").Help("An active job's last training loss (nats per token)").Register(*registry_)),
      job_progress_(BuildGauge().Name("slim_job_progress_ratio").Help("Steps done / total steps of an active job").Register(*registry_)),
      job_blas_threads_(BuildGauge()
                            .Name("slim_job_blas_threads")
                            .Help("OpenBLAS threads of an active CPU job's worker: its share of the cores (0: unknown)")
                            .Register(*registry_)),
      step_duration_(BuildHistogram()
                         .Name("slim_step_duration_seconds")
                         .Help("Duration of optimizer steps on a device (sampled at each progress report)")
                         .Register(*registry_)),
      job_failed_(BuildGauge()
                      .Name("slim_job_failed_time_seconds")
                      .Help("Unix time a job failed on this replica, by error code (kept an hour)")
                      .Register(*registry_)),
      tokens_trained_(BuildCounter().Name("slim_tokens_trained_total").Help("Training tokens processed by all jobs").Register(*registry_).Add({})),
      worker_restarts_(BuildCounter().Name("slim_worker_restarts_total").Help("Workers restarted from a checkpoint after a crash or server restart").Register(*registry_).Add({})),
      rpc_requests_(BuildCounter().Name("slim_rpc_requests_total").Help("RPCs handled, by method and status code").Register(*registry_)),
      rpc_duration_(BuildHistogram().Name("slim_rpc_duration_seconds").Help("RPC handling time (streams: their whole life)").Register(*registry_)) {
  BuildGauge().Name("slim_build_info").Help("Build information").Register(*registry_).Add({{"version", kSlimVersion}, {"api", "slim.v1"}}).Set(1);
  // Every outcome exists from the start (at 0), so rate() and increase() have series to work on.
  for (const char* outcome : {"succeeded", "failed", "cancelled"}) jobs_finished_.Add({{"outcome", outcome}});
  absl::MutexLock lock(&mu_);
  for (int s = v1::JOB_STATE_QUEUED; s <= v1::JOB_STATE_CANCELLED; ++s) {
    const auto state = static_cast<v1::JobState>(s);
    states_[state] = &jobs_by_state_.Add({{"state", Lower(state)}});
  }
}

ServiceMetrics::JobSeries& ServiceMetrics::SeriesFor(const v1::Job& job) {
  auto it = jobs_.find(job.id());
  if (it != jobs_.end()) return it->second;
  const prometheus::Labels labels = {{"job_id", job.id()}, {"device", job.device().empty() ? "none" : job.device()}};
  JobSeries s{&job_quota_.Add(labels), &job_predicted_.Add(labels), &job_observed_.Add(labels), &job_chunk_.Add(labels),
              &job_tokens_per_second_.Add(labels), &job_loss_.Add(labels), &job_progress_.Add(labels),
              &job_blas_threads_.Add(labels)};
  s.tokens = job.progress().tokens();
  return jobs_.emplace(job.id(), s).first->second;
}

void ServiceMetrics::RemoveSeries(const std::string& job_id) {
  const auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  JobSeries& s = it->second;
  job_quota_.Remove(s.quota);
  job_predicted_.Remove(s.predicted);
  job_observed_.Remove(s.observed);
  job_chunk_.Remove(s.chunk);
  job_tokens_per_second_.Remove(s.tokens_per_second);
  job_loss_.Remove(s.loss);
  job_progress_.Remove(s.progress);
  job_blas_threads_.Remove(s.blas_threads);
  jobs_.erase(it);
}

void ServiceMetrics::OnJobEvent(const v1::Job& job, const v1::JobEvent& event) {
  absl::MutexLock lock(&mu_);
  const std::string& kind = event.kind();
  if (kind == "queued") jobs_created_.Increment();
  if (kind == "retrying" || (kind == "planned" && event.message().find("resumed from step") != std::string::npos)) {
    worker_restarts_.Increment();
  }
  if (kind == "started" && job.attempts() == 1 && job.start_time().seconds() > 0) {
    const double wait = static_cast<double>(job.start_time().seconds() - job.create_time().seconds()) +
                        1e-9 * (job.start_time().nanos() - job.create_time().nanos());
    queue_wait_.Observe(std::max(0.0, wait));
  }
  if (kind == "succeeded" || kind == "failed" || kind == "cancelled") {
    jobs_finished_.Add({{"outcome", kind}}).Increment();
  }
  if (kind == "failed" && failed_.count(job.id()) == 0) {
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    // error_code is a google.rpc.Code, the numbering of absl::StatusCode.
    prometheus::Gauge& gauge = job_failed_.Add(
        {{"job_id", job.id()},
         {"device", job.device().empty() ? "none" : job.device()},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(job.error_code()))}});
    const int64_t failed_at = job.end_time().seconds() > 0 ? job.end_time().seconds() : now;
    gauge.Set(static_cast<double>(failed_at));
    failed_[job.id()] = FailedSeries{&gauge, failed_at};
    ForgetOldFailures(now);
  }
  // Per-job series follow a job only while it has a device (running or cancelling); a job
  // moving between devices (requeued) gets new series with the new device label.
  if (!IsActive(job.state()) || job.device().empty()) {
    RemoveSeries(job.id());
    return;
  }
  if (jobs_.count(job.id()) && kind == "started") RemoveSeries(job.id());  // maybe another device
  JobSeries& s = SeriesFor(job);
  s.quota->Set(static_cast<double>(job.quota_bytes()));
  s.predicted->Set(static_cast<double>(job.predicted_peak_bytes()));
  s.observed->Set(static_cast<double>(job.observed_peak_bytes()));
  s.chunk->Set(static_cast<double>(job.chunk_size()));
  const v1::JobProgress& p = job.progress();
  s.tokens_per_second->Set(p.tokens_per_second());
  s.loss->Set(p.loss());
  s.progress->Set(p.total_steps() > 0 ? static_cast<double>(p.step()) / static_cast<double>(p.total_steps()) : 0.0);
  s.blas_threads->Set(p.blas_threads());
  if (kind == "progress") {
    if (p.tokens() > s.tokens) tokens_trained_.Increment(static_cast<double>(p.tokens() - s.tokens));
    s.tokens = p.tokens();
    if (p.step_seconds() > 0) {
      step_duration_.Add({{"device", job.device()}}, SecondsBuckets(0.005, 16)).Observe(p.step_seconds());
    }
  }
}

void ServiceMetrics::ForgetOldFailures(int64_t now) {
  for (auto it = failed_.begin(); it != failed_.end();) {
    if (now - it->second.time > kFailedJobsSeconds) {
      job_failed_.Remove(it->second.gauge);
      it = failed_.erase(it);
    } else {
      ++it;
    }
  }
  while (failed_.size() > kFailedJobsKept) {
    auto oldest = std::min_element(failed_.begin(), failed_.end(),
                                   [](const auto& a, const auto& b) { return a.second.time < b.second.time; });
    job_failed_.Remove(oldest->second.gauge);
    failed_.erase(oldest);
  }
}

void ServiceMetrics::OnSchedulePass(const v1::ListDevicesResponse& devices, const std::vector<v1::Job>& queued,
                                    const std::map<v1::JobState, int64_t>& jobs_by_state) {
  absl::MutexLock lock(&mu_);
  ForgetOldFailures(absl::ToUnixSeconds(absl::Now()));
  queue_length_.Set(static_cast<double>(queued.size()));
  for (const auto& [state, gauge] : states_) {
    const auto it = jobs_by_state.find(state);
    gauge->Set(it == jobs_by_state.end() ? 0.0 : static_cast<double>(it->second));
  }
  for (const v1::Device& d : devices.devices()) {
    auto it = devices_.find(d.name());
    if (it == devices_.end()) {
      const prometheus::Labels labels = {{"device", d.name()}};
      it = devices_.emplace(d.name(), DeviceSeries{&device_capacity_.Add(labels), &device_committed_.Add(labels),
                                                   &device_footprint_.Add(labels), &device_observed_.Add(labels), &device_current_.Add(labels),
                                                   &device_jobs_.Add(labels), &device_process_.Add(labels)})
               .first;
    }
    it->second.capacity->Set(static_cast<double>(d.capacity_bytes()));
    it->second.committed->Set(static_cast<double>(d.committed_bytes()));
    it->second.footprint->Set(static_cast<double>(d.worker_footprint_bytes()));
    it->second.observed->Set(static_cast<double>(d.observed_bytes()));
    it->second.current->Set(static_cast<double>(d.current_bytes()));
    it->second.jobs->Set(static_cast<double>(d.job_ids_size()));
    it->second.process->Set(static_cast<double>(d.process_bytes()));
  }
}

void ServiceMetrics::OnRpc(const std::string& method, const std::string& code, double seconds) {
  rpc_requests_.Add({{"method", method}, {"code", code}}).Increment();
  rpc_duration_.Add({{"method", method}}, SecondsBuckets(0.0005, 18)).Observe(seconds);
}

}  // namespace slim::server
