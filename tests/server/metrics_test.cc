// ServiceMetrics: job events and scheduling passes become the documented series; per-job
// series exist only while a job is active; RPCs are counted by method and code.
#include "server/metrics/service_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <string>

#include "server/metrics/status_page.h"

namespace slim::server {
namespace {

std::string Scrape(const ServiceMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

bool Has(const std::string& text, const std::string& line) { return text.find(line) != std::string::npos; }

v1::Job RunningJob() {
  v1::Job job;
  job.set_id("job-000007");
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_device("cpu:1");
  job.set_quota_bytes(8 << 20);
  job.set_predicted_peak_bytes(7 << 20);
  job.set_observed_peak_bytes(6 << 20);
  job.set_chunk_size(224);
  job.set_attempts(1);
  job.mutable_create_time()->set_seconds(100);
  job.mutable_start_time()->set_seconds(103);
  job.mutable_progress()->set_step(5);
  job.mutable_progress()->set_total_steps(20);
  job.mutable_progress()->set_tokens(5000);
  job.mutable_progress()->set_blas_threads(2);
  job.mutable_progress()->set_loss(2.5);
  job.mutable_progress()->set_tokens_per_second(1000);
  job.mutable_progress()->set_step_seconds(0.25);
  return job;
}

TEST(ServiceMetrics, JobLifecycleSeries) {
  ServiceMetrics metrics;
  v1::Job job = RunningJob();
  v1::JobEvent event;
  event.set_kind("queued");
  job.set_state(v1::JOB_STATE_QUEUED);
  job.clear_device();
  metrics.OnJobEvent(job, event);
  EXPECT_TRUE(Has(Scrape(metrics), "slim_jobs_created_total 1"));
  EXPECT_FALSE(Has(Scrape(metrics), "slim_job_quota_bytes{"));  // queued: no device yet

  job = RunningJob();
  event.set_kind("started");
  metrics.OnJobEvent(job, event);
  event.set_kind("progress");
  metrics.OnJobEvent(job, event);
  std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text, "slim_job_quota_bytes{device=\"cpu:1\",job_id=\"job-000007\"} 8388608")) << text;
  EXPECT_TRUE(Has(text, "slim_job_chunk_size{device=\"cpu:1\",job_id=\"job-000007\"} 224"));
  EXPECT_TRUE(Has(text, "slim_job_progress_ratio{device=\"cpu:1\",job_id=\"job-000007\"} 0.25"));
  EXPECT_TRUE(Has(text, "slim_job_blas_threads{device=\"cpu:1\",job_id=\"job-000007\"} 2"));
  EXPECT_TRUE(Has(text, "slim_queue_wait_seconds_sum 3"));
  EXPECT_TRUE(Has(text, "slim_step_duration_seconds_count 1"));

  job.mutable_progress()->set_tokens(9000);
  metrics.OnJobEvent(job, event);
  EXPECT_TRUE(Has(Scrape(metrics), "slim_tokens_trained_total 4000"));

  job.set_state(v1::JOB_STATE_SUCCEEDED);
  event.set_kind("succeeded");
  metrics.OnJobEvent(job, event);
  text = Scrape(metrics);
  EXPECT_TRUE(Has(text, "slim_jobs_finished_total{outcome=\"succeeded\"} 1"));
  EXPECT_TRUE(Has(text, "slim_jobs_finished_total{outcome=\"failed\"} 0"));
  EXPECT_FALSE(Has(text, "job_id=\"job-000007\"")) << "per-job series must go when the job ends";
}

TEST(ServiceMetrics, SchedulePassAndRpcs) {
  ServiceMetrics metrics;
  v1::ListDevicesResponse devices;
  v1::Device* d = devices.add_devices();
  d->set_name("cpu:0");
  d->set_capacity_bytes(64 << 20);
  d->set_committed_bytes(12 << 20);
  d->set_worker_footprint_bytes(4 << 20);
  d->add_job_ids("job-000001");
  metrics.OnSchedulePass(devices, {RunningJob(), RunningJob()}, {{v1::JOB_STATE_RUNNING, 1}, {v1::JOB_STATE_QUEUED, 2}});
  metrics.OnRpc("GetJob", "NOT_FOUND", 0.002);
  const std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text, "slim_queue_length 2"));
  EXPECT_TRUE(Has(text, "slim_jobs{state=\"queued\"} 2"));
  EXPECT_TRUE(Has(text, "slim_jobs{state=\"failed\"} 0"));
  EXPECT_TRUE(Has(text, "slim_device_capacity_bytes{device=\"cpu:0\"} 67108864"));
  EXPECT_TRUE(Has(text, "slim_device_jobs{device=\"cpu:0\"} 1"));
  EXPECT_TRUE(Has(text, "slim_device_worker_footprint_bytes{device=\"cpu:0\"} 4194304"));
  EXPECT_TRUE(Has(text, "slim_rpc_requests_total{code=\"NOT_FOUND\",method=\"GetJob\"} 1"));
  EXPECT_TRUE(Has(text, "slim_build_info{api=\"slim.v1\",version=\"0.5.0\"} 1"));
}

TEST(StatusPage, ShowsDevicesAndJobsButNoTenantData) {
  v1::ListDevicesResponse devices;
  v1::Device* d = devices.add_devices();
  d->set_name("cpu:0");
  d->set_capacity_bytes(64 << 20);
  d->set_worker_footprint_bytes(16 << 20);
  d->add_job_ids("job-000007");
  v1::Job job = RunningJob();
  job.set_device("cpu:0");
  job.set_display_name("alice's secret project");
  job.set_tenant("alice");
  d->set_name("cpu:<b>0");
  const std::string html = RenderStatusPage(devices, {job});
  EXPECT_TRUE(Has(html, "id=\"device-cpu:&lt;b&gt;0\""));
  EXPECT_TRUE(Has(html, "job-000007"));
  EXPECT_TRUE(Has(html, "5/20"));
  EXPECT_TRUE(Has(html, "worker footprint 16.0 MiB per process"));
  EXPECT_TRUE(Has(html, "job-000007: worker footprint 16.0 MiB"));  // its segment in the bar
  EXPECT_FALSE(Has(html, "cpu:<b>0"));
  // Served without a token: no tenant data (docs/security.md).
  EXPECT_FALSE(Has(html, "secret project"));
  EXPECT_FALSE(Has(html, "alice"));
}

}  // namespace
}  // namespace slim::server
