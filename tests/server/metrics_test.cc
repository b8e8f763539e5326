// ServiceMetrics: job events and scheduling passes become the documented series; per-job
// series exist only while a job is active; RPCs are counted by method and code.
#include "server/metrics/service_metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/metrics/status_page.h"

namespace slim::server {
namespace {

std::string Scrape(const ServiceMetrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

bool Has(const std::string& text, const std::string& line) { return text.find(line) != std::string::npos; }
int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

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
  EXPECT_TRUE(Has(text, "slim_step_duration_seconds_count{device=\"cpu:1\"} 1")) << text;

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

// A failed job is named by a series of its own (for the SlimJobFailed alert), an hour at most
// and the newest 100 at most, so that failures cannot grow the scrape without bound.
TEST(ServiceMetrics, FailedJobsAreNamedForAlertsAndForgottenLater) {
  ServiceMetrics metrics;
  v1::JobEvent event;
  event.set_kind("failed");
  const int64_t start = absl::ToUnixSeconds(absl::Now()) - 200;
  for (int i = 0; i < 105; ++i) {
    v1::Job job = RunningJob();
    job.set_id("job-" + std::to_string(100000 + i));
    job.set_state(v1::JOB_STATE_FAILED);
    job.set_error_code(8);  // RESOURCE_EXHAUSTED
    job.mutable_end_time()->set_seconds(start + i);
    metrics.OnJobEvent(job, event);
  }
  const std::string text = Scrape(metrics);
  EXPECT_TRUE(Has(text, "slim_job_failed_time_seconds{code=\"RESOURCE_EXHAUSTED\",device=\"cpu:1\",job_id=\"job-100104\"} " +
                            std::to_string(start + 104)))
      << text;
  EXPECT_FALSE(Has(text, "job_id=\"job-100004\"")) << "the oldest beyond 100 are forgotten";
  // An hour later (a failure an hour old arrives), the old ones go.
  v1::Job old = RunningJob();
  old.set_id("job-200000");
  old.set_state(v1::JOB_STATE_FAILED);
  old.mutable_end_time()->set_seconds(start - 7200);
  metrics.OnJobEvent(old, event);
  EXPECT_FALSE(Has(Scrape(metrics), "job_id=\"job-200000\"")) << "a failure older than an hour";
  EXPECT_TRUE(Has(text, "slim_jobs_finished_total{outcome=\"failed\"} 105"));
  size_t series = 0;
  for (size_t at = text.find("\nslim_job_failed_time_seconds{"); at != std::string::npos;
       at = text.find("\nslim_job_failed_time_seconds{", at + 1)) {
    ++series;
  }
  EXPECT_EQ(series, 100u);
}

TEST(ServiceMetrics, SchedulePassAndRpcs) {
  ServiceMetrics metrics;
  v1::ListDevicesResponse devices;
  v1::Device* d = devices.add_devices();
  d->set_name("cpu:0");
  d->set_capacity_bytes(64 << 20);
  d->set_committed_bytes(12 << 20);
  d->set_worker_footprint_bytes(4 << 20);
  d->set_process_bytes(200 << 20);
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
  EXPECT_TRUE(Has(text, "slim_device_process_bytes{device=\"cpu:0\"} 209715200"));
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
  const std::string html = RenderStatusPage(devices, {}, {job}, "");
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

// The value of the first `property:` in the style after `marker` (e.g. a job's segment),
// "" if none.
std::string StyleAfter(const std::string& html, const std::string& marker, const std::string& property,
                       size_t from = 0) {
  const size_t at = html.find(marker, from);
  if (at == std::string::npos) return "";
  const size_t style = html.find("style=\"", at);
  const size_t end = html.find('"', style + 7);
  const std::string css = html.substr(style + 7, end - style - 7);
  const size_t p = css.find(property + ":");
  if (p == std::string::npos) return "";
  return css.substr(p + property.size() + 1, css.find(';', p) - p - property.size() - 1);
}

v1::Job JobOn(const std::string& id, const std::string& device, int64_t quota) {
  v1::Job job = RunningJob();
  job.set_id(id);
  job.set_device(device);
  job.set_quota_bytes(quota);
  job.set_observed_peak_bytes(quota / 2);
  return job;
}

TEST(StatusPage, HasALegend) {
  v1::ListDevicesResponse devices;
  devices.add_devices()->set_name("cpu:0");
  const std::string html = RenderStatusPage(devices, {}, {}, "");
  EXPECT_TRUE(Has(html, "class=\"legend\""));
  EXPECT_TRUE(Has(html, "a job's quota"));
  EXPECT_TRUE(Has(html, "observed peak"));
  EXPECT_TRUE(Has(html, "worker footprint"));
  EXPECT_TRUE(Has(html, "free"));
  EXPECT_FALSE(Has(html, "<script"));
}

TEST(StatusPage, AJobKeepsItsColourWhenAnotherLeaves) {
  v1::ListDevicesResponse devices;
  v1::Device* d = devices.add_devices();
  d->set_name("cpu:0");
  d->set_capacity_bytes(64 << 20);
  d->add_job_ids("job-000003");
  d->add_job_ids("job-000004");
  const v1::Job first = JobOn("job-000003", "cpu:0", 8 << 20), second = JobOn("job-000004", "cpu:0", 8 << 20);
  const std::string both = RenderStatusPage(devices, {}, {first, second}, "");
  const std::string bar = StyleAfter(both, "class=\"seg\" data-job=\"job-000004\"", "background");
  const std::string list = StyleAfter(both, "class=\"sw\" data-job=\"job-000004\"", "background");
  ASSERT_FALSE(bar.empty()) << both;
  EXPECT_EQ(bar, list) << "the bar and the job list disagree";
  EXPECT_NE(StyleAfter(both, "class=\"seg\" data-job=\"job-000003\"", "background"), bar)
      << "consecutive jobs share a colour";

  d->clear_job_ids();
  d->add_job_ids("job-000004");
  const std::string alone = RenderStatusPage(devices, {}, {second}, "");
  EXPECT_EQ(StyleAfter(alone, "class=\"seg\" data-job=\"job-000004\"", "background"), bar);
  EXPECT_EQ(StyleAfter(alone, "class=\"sw\" data-job=\"job-000004\"", "background"), bar);
}

TEST(StatusPage, AFailedJobShowsItsErrorEscaped) {
  v1::Job job = RunningJob();
  job.set_state(v1::JOB_STATE_FAILED);
  job.set_error_code(8);
  job.set_error("resource_exhausted: <script>alert(1)</script> & \"quoted\" " + std::string(300, 'x') + " END");
  const std::string html = RenderStatusPage(v1::ListDevicesResponse(), {}, {job}, "");
  // The code's name once (the worker's lower-case prefix goes), then the message, escaped.
  EXPECT_TRUE(Has(html, "<b>RESOURCE_EXHAUSTED</b> &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot; xxx"))
      << html;
  EXPECT_FALSE(Has(html, "<script>"));
  // Truncated on the page, in full in the title.
  EXPECT_TRUE(Has(html, "x…</td>"));
  EXPECT_TRUE(Has(html, "title=\"RESOURCE_EXHAUSTED: &lt;script&gt;"));
  EXPECT_TRUE(Has(html, " END\">"));
  EXPECT_FALSE(Has(html, " END<"));

  job.set_error_code(3);  // a message without the prefix keeps all of it
  job.set_error("dataset line 3: bad JSON");
  EXPECT_TRUE(Has(RenderStatusPage(v1::ListDevicesResponse(), {}, {job}, ""),
                  "<b>INVALID_ARGUMENT</b> dataset line 3: bad JSON</td>"));

  job.set_state(v1::JOB_STATE_SUCCEEDED);  // an error only shows on a FAILED job
  EXPECT_FALSE(Has(RenderStatusPage(v1::ListDevicesResponse(), {}, {job}, ""), "alert(1)"));
}

TEST(StatusPage, ZoomsInOnSmallJobsOnALargeDevice) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  v1::ListDevicesResponse devices;
  v1::Device* d = devices.add_devices();
  d->set_name("cpu:0");
  d->set_capacity_bytes(64 * kGiB);
  d->set_worker_footprint_bytes(256 << 20);
  d->add_job_ids("job-000001");
  d->add_job_ids("job-000002");
  const int64_t one_percent = 64 * kGiB / 100;
  d->set_committed_bytes(2 * (one_percent + (256 << 20)));
  const std::vector<v1::Job> jobs = {JobOn("job-000001", "cpu:0", one_percent),
                                     JobOn("job-000002", "cpu:0", one_percent)};
  const std::string html = RenderStatusPage(devices, {}, jobs, "");
  const size_t zoom = html.find("class=\"bar zoom\"");
  ASSERT_NE(zoom, std::string::npos) << html;
  EXPECT_TRUE(Has(html, "zoomed &times;32: the first 2.0 GiB of 64.0 GiB")) << html;
  // 1% of the device: 1% of the full bar, about 32% of the zoomed one (640 px wide).
  EXPECT_EQ(StyleAfter(html, "data-job=\"job-000002\"", "width"), "1.00%");
  const double zoomed = std::atof(StyleAfter(html, "data-job=\"job-000002\"", "width", zoom).c_str());
  EXPECT_GE(zoomed, 25.0) << html;

  // Jobs that fill much of the device need no zoom.
  d->set_capacity_bytes(4 * kGiB);
  EXPECT_FALSE(Has(RenderStatusPage(devices, {}, jobs, ""), "class=\"bar zoom\""));
  d->clear_job_ids();
  d->set_committed_bytes(0);
  EXPECT_FALSE(Has(RenderStatusPage(devices, {}, {}, ""), "class=\"bar zoom\""));
}

TEST(StatusPage, ShowsTheReplicaOfItsDevicesAndOfEachJob) {
  v1::ListDevicesResponse devices;
  v1::Device* cpu = devices.add_devices();
  cpu->set_name("cpu:0");
  cpu->set_replica("gpu-host-1");
  cpu->add_job_ids("job-000001");
  v1::Job here = JobOn("job-000001", "cpu:0", 8 << 20), there = JobOn("job-000002", "cpu:0", 8 << 20);
  here.set_replica("gpu-host-1");
  there.set_replica("gpu-<host>-2");
  v1::Job queued = RunningJob();
  queued.set_state(v1::JOB_STATE_QUEUED);
  queued.clear_device();
  // As the store has them: every live replica's publication, this one's (older) included.
  v1::ListDevicesResponse published_here = devices;
  published_here.mutable_devices(0)->clear_job_ids();
  v1::ListDevicesResponse published_there;
  v1::Device* other_cpu = published_there.add_devices();
  other_cpu->set_name("cpu:0");
  other_cpu->set_replica("gpu-<host>-2");
  other_cpu->set_capacity_bytes(64 << 20);
  other_cpu->add_job_ids("job-000002");
  const std::string html =
      RenderStatusPage(devices, {published_here, published_there}, {here, there, queued}, "gpu-host-1");
  // One section per replica, this one first, from its own fresh devices.
  const size_t this_one = html.find("<h3>Replica gpu-host-1 (this one)</h3>");
  const size_t other_one = html.find("<h3>Replica gpu-&lt;host&gt;-2</h3>");
  ASSERT_NE(this_one, std::string::npos) << html;
  ASSERT_NE(other_one, std::string::npos) << html;
  EXPECT_LT(this_one, other_one);
  EXPECT_EQ(Count(html, "<h3>Replica gpu-host-1"), 1) << "this replica's publication drawn as well";
  EXPECT_TRUE(Has(html, "id=\"replica-gpu-host-1\""));
  EXPECT_TRUE(Has(html, "id=\"device-gpu-host-1/cpu:0\""));
  EXPECT_TRUE(Has(html, "id=\"device-gpu-&lt;host&gt;-2/cpu:0\""));
  // Each job's segment is in its replica's bar: job-000001 (from the fresh devices) before the
  // other section, job-000002 after it.
  const size_t here_segment = html.find("class=\"seg\" data-job=\"job-000001\"");
  const size_t there_segment = html.find("class=\"seg\" data-job=\"job-000002\"");
  ASSERT_NE(here_segment, std::string::npos);
  ASSERT_NE(there_segment, std::string::npos);
  EXPECT_LT(here_segment, other_one);
  EXPECT_GT(there_segment, other_one);
  EXPECT_FALSE(Has(html, "No other replica is live"));
  // The job list: every job of the fleet with its replica.
  EXPECT_TRUE(Has(html, "<th>replica</th>"));
  EXPECT_TRUE(Has(html, "<td>gpu-host-1 (this one)</td>"));
  EXPECT_TRUE(Has(html, "<td>gpu-&lt;host&gt;-2</td>"));
  EXPECT_TRUE(Has(html, "<td>QUEUED</td><td>-</td>"));  // on no replica yet

  // Alone in its fleet, and when the store cannot be read (no publication, not even its own).
  EXPECT_TRUE(Has(RenderStatusPage(devices, {published_here}, {here}, "gpu-host-1"), "No other replica is live"));
  EXPECT_TRUE(Has(RenderStatusPage(devices, {}, {here}, "gpu-host-1"), "could not be read from the store"));

  // A single slimd: no replica heading or column.
  const std::string single = RenderStatusPage(devices, {}, {queued}, "");
  EXPECT_TRUE(Has(single, "<h2>Devices</h2>"));
  EXPECT_FALSE(Has(single, "<h3>Replica"));
  EXPECT_FALSE(Has(single, "<th>replica</th>"));
}

}  // namespace
}  // namespace slim::server
