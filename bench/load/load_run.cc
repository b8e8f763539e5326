#include "bench/load/load_run.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/load/rss_sampler.h"
#include "bench/load/stats.h"
#include "bench/load/watch_stream.h"
#include "client/dataset_upload.h"
#include "slim/v1/slim.grpc.pb.h"

namespace slim::load {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kSlowCallSeconds = 600;  // CreateJob may first calibrate the planner

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), what + ": " + s.error_message());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Deterministic text to train on when no file is given (~128 KiB).
std::string GeneratedText() {
  std::string text;
  for (int i = 0; text.size() < (128 << 10); ++i) {
    text += "slim-load trains tiny models while clients watch and poll them, line " + std::to_string(i % 997) + ".\n";
  }
  return text;
}

Json Num(double v) { return JsonNumber(v); }

Json SummaryJson(const Summary& s) {
  Json o = JsonObject();
  o.members["count"] = Num(static_cast<double>(s.count));
  o.members["mean"] = Num(s.mean);
  o.members["min"] = Num(s.min);
  o.members["p50"] = Num(s.p50);
  o.members["p90"] = Num(s.p90);
  o.members["p99"] = Num(s.p99);
  o.members["max"] = Num(s.max);
  return o;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

class LoadRun {
 public:
  LoadRun(const LoadOptions& options, std::ostream& log) : o_(options), log_(log), rng_(options.seed) {}
  ~LoadRun() {
    // A stream that never ended is still gRPC's: leaked rather than destroyed under its feet.
    for (auto* group : {&streams_, &monitors_}) {
      for (auto& stream : *group) {
        if (!stream->stats().done) (void)stream.release();
      }
    }
  }

  absl::StatusOr<Json> Run() {
    origin_ = absl::Now();
    report_ = JsonObject();
    report_.members["load_average_at_start"] = JsonString(LoadAverage());
    if (o_.server_pid > 0) rss_ = std::make_unique<RssSampler>(o_.server_pid, origin_, absl::Seconds(1));
    absl::Status status = Setup();
    if (status.ok()) status = Measure();
    Cleanup();
    if (!status.ok()) return status;
    BuildReport();
    return report_;
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context(double seconds) const {
    auto context = std::make_unique<grpc::ClientContext>();
    if (!o_.token.empty()) context->AddMetadata("authorization", "Bearer " + o_.token);
    if (seconds > 0) {
      context->set_deadline(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    }
    return context;
  }

  v1::Slim::Stub& Stub(size_t i) { return *stubs_[i % stubs_.size()]; }

  void Log(const std::string& line) {
    log_ << absl::StrFormat("[%6.1fs] ", absl::ToDoubleSeconds(absl::Now() - origin_)) << line << std::endl;
  }

  absl::Status Setup() {
    for (int i = 0; i < std::max(1, o_.channels); ++i) {
      grpc::ChannelArguments args;
      // Each channel gets its own connection (channels with equal arguments would share one).
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      channels_.push_back(grpc::CreateCustomChannel(o_.address, grpc::InsecureChannelCredentials(), args));
      stubs_.push_back(v1::Slim::NewStub(channels_.back()));
    }
    for (const auto& channel : channels_) {
      if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
        return absl::UnavailableError("cannot connect to " + o_.address);
      }
    }
    Log(absl::StrCat("connected to ", o_.address, " over ", channels_.size(), " channel(s)"));

    // Jobs created under load ask for a whole device, so they wait behind the training jobs.
    v1::ListDevicesResponse devices;
    grpc::Status s = Stub(0).ListDevices(Context(o_.call_timeout_seconds).get(), {}, &devices);
    if (!s.ok()) return FromGrpc(s, "ListDevices");
    if (devices.devices().empty()) return absl::FailedPreconditionError("the server has no devices");
    // Specs without memory.device_kind go to the kind of the server's first device.
    int64_t largest = 0;
    for (const v1::Device& d : devices.devices()) {
      if (d.kind() == devices.devices(0).kind()) largest = std::max(largest, d.capacity_bytes());
    }
    queued_quota_ = o_.queued_quota.empty() ? std::to_string(largest) : o_.queued_quota;

    absl::Status uploaded = UploadDataset();
    if (!uploaded.ok()) return uploaded;

    for (int i = 0; i < o_.jobs_training; ++i) {
      v1::CreateJobRequest request;
      *request.mutable_spec() = Spec(o_.steps, o_.quota);
      request.set_display_name(absl::StrCat("slim-load-train-", i));
      v1::CreateJobResponse response;
      s = Stub(0).CreateJob(Context(kSlowCallSeconds).get(), request, &response);
      if (!s.ok()) return FromGrpc(s, "CreateJob (training job)");
      training_.push_back(response.job().id());
      Log(absl::StrCat("training job ", response.job().id(), ": chunk size ", response.job().chunk_size(), ", quota ",
                       response.job().quota_bytes(), " bytes"));
    }
    // Running and stepping: the worker has planned, loaded its data and finished a step.
    const absl::Time deadline = absl::Now() + absl::Seconds(o_.ready_timeout_seconds);
    for (const std::string& id : training_) {
      while (true) {
        absl::StatusOr<v1::Job> job = Get(id);
        if (!job.ok()) return job.status();
        if (job->state() == v1::JOB_STATE_RUNNING && job->progress().step() > 0) break;
        if (job->state() != v1::JOB_STATE_QUEUED && job->state() != v1::JOB_STATE_RUNNING) {
          return absl::FailedPreconditionError(absl::StrCat("training job ", id, " ended ",
                                                            v1::JobState_Name(job->state()), ": ", job->error()));
        }
        if (absl::Now() > deadline) {
          return absl::DeadlineExceededError(absl::StrCat("training job ", id, " is not stepping after ",
                                                          o_.ready_timeout_seconds, " s (", v1::JobState_Name(job->state()),
                                                          ")"));
        }
        absl::SleepFor(absl::Milliseconds(200));
      }
    }
    Log(absl::StrCat(training_.size(), " training job(s) running"));
    return absl::OkStatus();
  }

  absl::Status UploadDataset() {
    client::DatasetUpload upload{"slim-load", "text", o_.data_path.empty() ? GeneratedText() : ReadFile(o_.data_path)};
    if (upload.data.empty()) return absl::InvalidArgumentError("--data: " + o_.data_path + " is empty or unreadable");
    // The same bytes uploaded before (a rerun against the same server) are reused, as slimctl does.
    v1::Dataset dataset;
    const grpc::Status s = client::FindOrUploadDataset(
        Stub(0),
        [this](bool streaming) { return Context(streaming ? kSlowCallSeconds : o_.call_timeout_seconds); }, upload,
        nullptr, &dataset);
    if (!s.ok()) return FromGrpc(s, "UploadDataset");
    dataset_ = dataset.id();
    Log("dataset " + dataset_);
    return absl::OkStatus();
  }

  v1::JobSpec Spec(int64_t steps, const std::string& quota) const {
    v1::JobSpec spec;
    spec.mutable_model()->set_preset(o_.preset);
    spec.mutable_data()->add_train()->set_dataset(dataset_);
    spec.mutable_training()->set_seq_len(o_.seq_len);
    spec.mutable_training()->set_batch_size(o_.batch_size);
    spec.mutable_training()->set_steps(static_cast<int32_t>(steps));
    spec.mutable_training()->mutable_optimizer()->set_lr(1e-3);
    spec.mutable_memory()->set_quota(quota);
    return spec;
  }

  absl::StatusOr<v1::Job> Get(const std::string& id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::GetJobResponse response;
    const grpc::Status s = Stub(0).GetJob(Context(o_.call_timeout_seconds).get(), request, &response);
    if (!s.ok()) return FromGrpc(s, "GetJob " + id);
    return response.job();
  }

  void OnProgress(const ProgressPoint& p) {
    absl::MutexLock lock(&mu_);
    progress_[p.job_id].emplace(p.sequence, p);
  }

  std::unique_ptr<WatchStream> OpenStream(const std::string& job_id, int64_t after_sequence, size_t channel) {
    auto stream = std::make_unique<WatchStream>(Context(0), job_id, after_sequence,
                                                [this](const ProgressPoint& p) { OnProgress(p); });
    stream->Start(Stub(channel));
    return stream;
  }

  absl::Status Measure() {
    // Baseline: the training jobs alone, watched by one monitor stream each.
    std::map<std::string, int64_t> last_sequence;
    for (const std::string& id : training_) {
      absl::StatusOr<v1::Job> job = Get(id);
      if (!job.ok()) return job.status();
      last_sequence[id] = job->last_sequence();
    }
    for (size_t i = 0; i < training_.size(); ++i) {
      monitors_.push_back(OpenStream(training_[i], last_sequence[training_[i]], i));
    }
    if (o_.warmup_seconds > 0) {
      Log(absl::StrCat("warm-up: ", o_.warmup_seconds, " s"));
      absl::SleepFor(absl::Seconds(o_.warmup_seconds));
    }
    Log(absl::StrCat("baseline before the load: ", o_.baseline_seconds, " s"));
    before_from_ = absl::Now();
    absl::SleepFor(absl::Seconds(o_.baseline_seconds));
    before_to_ = absl::Now();

    // The load streams, spread over the training jobs and the channels; wait for every
    // snapshot before the window opens, so that opening them is not part of the window.
    for (const std::string& id : training_) {
      absl::StatusOr<v1::Job> job = Get(id);
      if (!job.ok()) return job.status();
      last_sequence[id] = job->last_sequence();
    }
    Log(absl::StrCat("opening ", o_.streams, " WatchJob streams"));
    for (int i = 0; i < o_.streams; ++i) {
      const std::string& id = training_[static_cast<size_t>(i) % training_.size()];
      streams_.push_back(OpenStream(id, last_sequence[id], static_cast<size_t>(i)));
    }
    const absl::Time snapshots_deadline = absl::Now() + absl::Seconds(60);
    for (const auto& stream : streams_) {
      while (stream->stats().received.empty() && !stream->stats().done && absl::Now() < snapshots_deadline) {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }

    Log(absl::StrCat("load: ", o_.rate, " requests/s for ", o_.duration_seconds, " s"));
    rss_load_start_ = o_.server_pid > 0 ? ReadRssKib(o_.server_pid) : std::nullopt;
    for (const char* method : {"CreateJob", "GetJob", "ListJobs"}) methods_[method];  // no inserts once calls run
    load_from_ = absl::Now();
    const Clock::time_point start = Clock::now();
    const double total = o_.create_weight + o_.get_weight + o_.list_weight;
    std::uniform_real_distribution<double> pick(0, total);
    for (int64_t k = 0;; ++k) {
      const Clock::time_point due =
          start + std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(k) * 1e9 / o_.rate));
      if (due - start >= std::chrono::nanoseconds(static_cast<int64_t>(o_.duration_seconds * 1e9))) break;
      std::this_thread::sleep_until(due);
      max_issue_lag_ms_ = std::max(max_issue_lag_ms_, std::chrono::duration<double, std::milli>(Clock::now() - due).count());
      const double x = pick(rng_);
      if (x < o_.create_weight) {
        IssueCreate(due, static_cast<size_t>(k));
      } else if (x < o_.create_weight + o_.get_weight) {
        IssueGet(due, static_cast<size_t>(k));
      } else {
        IssueList(due, static_cast<size_t>(k));
      }
    }
    load_to_ = absl::Now();
    rss_load_end_ = o_.server_pid > 0 ? ReadRssKib(o_.server_pid) : std::nullopt;
    Log("load done; waiting for the calls in flight");
    {
      absl::MutexLock lock(&mu_);
      const auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
      if (!mu_.AwaitWithTimeout(absl::Condition(&drained), absl::Seconds(o_.call_timeout_seconds + 10))) {
        return absl::DeadlineExceededError(absl::StrCat(in_flight_, " calls did not complete"));
      }
    }
    // The same measurement once more without load (the streams closed, no calls), so that a
    // drift in the machine's speed over the run shows instead of passing for the load's effect.
    CloseStreams(streams_);
    Log(absl::StrCat("baseline after the load: ", o_.baseline_seconds, " s"));
    after_from_ = absl::Now();
    absl::SleepFor(absl::Seconds(o_.baseline_seconds));
    after_to_ = absl::Now();
    return absl::OkStatus();
  }

  void CloseStreams(const std::vector<std::unique_ptr<WatchStream>>& streams) {
    for (const auto& stream : streams) stream->Cancel();
    for (const auto& stream : streams) {
      if (!stream->WaitDone(absl::Seconds(30))) {
        Log("a WatchJob stream on " + stream->stats().job_id + " did not end within 30 s of its cancel");
      }
    }
  }

  // A call in flight: everything gRPC needs until the callback runs.
  template <typename Request, typename Response>
  struct Call {
    std::unique_ptr<grpc::ClientContext> context;
    Request request;
    Response response;
    Clock::time_point due;
  };

  template <typename Request, typename Response, typename Start, typename Done>
  void Issue(Clock::time_point due, const std::string& method, double timeout, Request request, Start start,
             Done done) {
    auto call = std::make_shared<Call<Request, Response>>();
    call->context = Context(timeout);
    call->request = std::move(request);
    call->due = due;
    {
      absl::MutexLock lock(&mu_);
      ++in_flight_;
    }
    MethodStats* stats = &methods_.at(method);
    start(call->context.get(), &call->request, &call->response, [this, call, stats, done](grpc::Status s) {
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - call->due).count();
      stats->Record(ms, s.error_code());
      done(s, call->response);
      absl::MutexLock lock(&mu_);
      --in_flight_;
    });
  }

  void IssueGet(Clock::time_point due, size_t k) {
    v1::GetJobRequest request;
    {
      absl::MutexLock lock(&mu_);
      const size_t n = training_.size() + created_.size();
      const size_t i = std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
      request.set_id(i < training_.size() ? training_[i] : created_[i - training_.size()]);
    }
    v1::Slim::StubInterface::async_interface* async = Stub(k).async();
    Issue<v1::GetJobRequest, v1::GetJobResponse>(
        due, "GetJob", o_.call_timeout_seconds, std::move(request),
        [async](grpc::ClientContext* c, const v1::GetJobRequest* q, v1::GetJobResponse* r, auto f) {
          async->GetJob(c, q, r, std::move(f));
        },
        [](const grpc::Status&, const v1::GetJobResponse&) {});
  }

  void IssueList(Clock::time_point due, size_t k) {
    v1::ListJobsRequest request;
    request.set_page_size(o_.list_page_size);
    v1::Slim::StubInterface::async_interface* async = Stub(k).async();
    Issue<v1::ListJobsRequest, v1::ListJobsResponse>(
        due, "ListJobs", o_.call_timeout_seconds, std::move(request),
        [async](grpc::ClientContext* c, const v1::ListJobsRequest* q, v1::ListJobsResponse* r, auto f) {
          async->ListJobs(c, q, r, std::move(f));
        },
        [](const grpc::Status&, const v1::ListJobsResponse&) {});
  }

  void IssueCreate(Clock::time_point due, size_t k) {
    v1::CreateJobRequest request;
    *request.mutable_spec() = Spec(10, queued_quota_);
    request.set_priority(-1);
    request.set_display_name(absl::StrCat("slim-load-queued-", k));
    v1::Slim::StubInterface::async_interface* async = Stub(k).async();
    Issue<v1::CreateJobRequest, v1::CreateJobResponse>(
        due, "CreateJob", o_.call_timeout_seconds, std::move(request),
        [async](grpc::ClientContext* c, const v1::CreateJobRequest* q, v1::CreateJobResponse* r, auto f) {
          async->CreateJob(c, q, r, std::move(f));
        },
        [this](const grpc::Status& s, const v1::CreateJobResponse& r) {
          if (!s.ok()) return;
          absl::MutexLock lock(&mu_);
          created_.push_back(r.job().id());
        });
  }

  // Streams first (a cancelled training job would end them), then the queued jobs (they would
  // start once the training jobs are gone), then the training jobs.
  void Cleanup() {
    if (stubs_.empty()) return;
    CloseStreams(streams_);  // no-ops for streams already closed
    CloseStreams(monitors_);
    std::vector<std::string> created;
    {
      absl::MutexLock lock(&mu_);
      created = created_;
    }
    int64_t cancelled = 0, started = 0;
    for (const std::string& id : created) {
      v1::CancelJobRequest request;
      request.set_id(id);
      v1::CancelJobResponse response;
      const grpc::Status s = Stub(0).CancelJob(Context(o_.call_timeout_seconds).get(), request, &response);
      if (s.ok()) ++cancelled;
      if (s.ok() && response.job().attempts() > 0) ++started;
      if (!s.ok()) Log("CancelJob " + id + ": " + s.error_message());
    }
    for (const std::string& id : training_) {
      v1::CancelJobRequest request;
      request.set_id(id);
      v1::CancelJobResponse response;
      const grpc::Status s = Stub(0).CancelJob(Context(o_.call_timeout_seconds).get(), request, &response);
      if (!s.ok()) Log("CancelJob " + id + ": " + s.error_message());
    }
    Log(absl::StrCat("cancelled ", cancelled, " queued job(s) and ", training_.size(), " training job(s)"));
    Json cleanup = JsonObject();
    cleanup.members["created_jobs"] = Num(static_cast<double>(created.size()));
    cleanup.members["created_jobs_cancelled"] = Num(static_cast<double>(cancelled));
    cleanup.members["created_jobs_that_started"] = Num(static_cast<double>(started));
    report_.members["cleanup"] = cleanup;
    if (rss_ != nullptr) rss_->Stop();
  }

  void BuildReport() {
    Json config = JsonObject();
    config.members["address"] = JsonString(o_.address);
    config.members["channels"] = Num(static_cast<double>(channels_.size()));
    config.members["duration_s"] = Num(o_.duration_seconds);
    config.members["streams"] = Num(o_.streams);
    config.members["rate_per_s"] = Num(o_.rate);
    config.members["mix"] = JsonString(absl::StrCat("create=", o_.create_weight, ",get=", o_.get_weight,
                                                    ",list=", o_.list_weight));
    config.members["list_page_size"] = Num(o_.list_page_size);
    config.members["baseline_s"] = Num(o_.baseline_seconds);
    config.members["warmup_s"] = Num(o_.warmup_seconds);
    config.members["jobs_training"] = Num(o_.jobs_training);
    config.members["training_spec"] = JsonString(absl::StrCat("preset=", o_.preset, " seq_len=", o_.seq_len,
                                                              " batch=", o_.batch_size, " quota=", o_.quota));
    config.members["queued_quota_bytes"] = JsonString(queued_quota_);
    report_.members["config"] = config;
    report_.members["load_average_at_end"] = JsonString(LoadAverage());
    report_.members["cpus"] = Num(static_cast<double>(std::thread::hardware_concurrency()));
    report_.members["load_window_s"] = Num(absl::ToDoubleSeconds(load_to_ - load_from_));
    report_.members["max_issue_lag_ms"] = Num(max_issue_lag_ms_);

    Json requests = JsonObject();
    int64_t all = 0, failed = 0;
    for (const auto& [name, stats] : methods_) {
      const MethodStats::Result r = stats.Get();
      Json m = JsonObject();
      m.members["count"] = Num(static_cast<double>(r.latency_ms.count));
      m.members["ok"] = Num(static_cast<double>(r.ok));
      Json errors = JsonObject();
      for (const auto& [code, n] : r.errors) {
        errors.members[code] = Num(static_cast<double>(n));
        failed += n;
      }
      m.members["errors"] = errors;
      m.members["latency_ms"] = SummaryJson(r.latency_ms);
      requests.members[name] = m;
      all += r.latency_ms.count;
    }
    report_.members["requests"] = requests;
    report_.members["requests_total"] = Num(static_cast<double>(all));
    report_.members["requests_failed"] = Num(static_cast<double>(failed));

    // Streams: what each received, its longest silence in the window, how late events arrived.
    Json streams = JsonObject();
    std::vector<double> messages, in_window, gaps, delivery, snapshot_ms;
    int64_t without_events = 0, ended_early = 0, events_total = 0;
    Json per_stream = JsonArray();
    for (const auto& stream : streams_) {
      const WatchStream::Stats s = stream->stats();
      messages.push_back(static_cast<double>(s.received.size()));
      in_window.push_back(static_cast<double>(std::count_if(s.received.begin(), s.received.end(), [&](absl::Time t) {
        return t >= load_from_ && t <= load_to_;
      })));
      const double gap = LongestGapSeconds(s.received, load_from_, load_to_);
      gaps.push_back(gap);
      delivery.insert(delivery.end(), s.delivery_ms.begin(), s.delivery_ms.end());
      if (!s.received.empty()) snapshot_ms.push_back(absl::ToDoubleMilliseconds(s.received.front() - s.opened));
      if (s.events == 0) ++without_events;
      if (!s.cancelled_by_us) ++ended_early;
      events_total += s.events;
      Json one = JsonObject();
      one.members["job"] = JsonString(s.job_id);
      one.members["messages"] = Num(static_cast<double>(s.received.size()));
      one.members["events"] = Num(static_cast<double>(s.events));
      one.members["longest_gap_s"] = Num(gap);
      one.members["status"] = JsonString(StatusCodeName(s.status.error_code()));
      per_stream.items.push_back(one);
    }
    streams.members["count"] = Num(static_cast<double>(streams_.size()));
    streams.members["events_total"] = Num(static_cast<double>(events_total));
    streams.members["streams_without_events"] = Num(static_cast<double>(without_events));
    streams.members["ended_before_cancel"] = Num(static_cast<double>(ended_early));
    streams.members["messages_per_stream"] = SummaryJson(Summarize(messages));
    streams.members["messages_per_stream_in_window"] = SummaryJson(Summarize(in_window));
    streams.members["longest_gap_s"] = SummaryJson(Summarize(gaps));
    streams.members["delivery_delay_ms"] = SummaryJson(Summarize(delivery));
    streams.members["time_to_snapshot_ms"] = SummaryJson(Summarize(snapshot_ms));
    streams.members["per_stream"] = per_stream;
    report_.members["streams"] = streams;

    // Training: steps/s under load against the mean of the baselines before and after it, from
    // the same jobs.
    Json training = JsonObject();
    Json jobs = JsonArray();
    double baseline_sum = 0, load_sum = 0;
    bool complete = !training_.empty();
    {
      absl::MutexLock lock(&mu_);
      for (const std::string& id : training_) {
        const ProgressLog& points = progress_[id];
        const std::optional<double> before = StepsPerSecond(points, before_from_, before_to_);
        const std::optional<double> after = StepsPerSecond(points, after_from_, after_to_);
        const std::optional<double> during = StepsPerSecond(points, load_from_, load_to_);
        // (Plain values rather than an optional: GCC 12 warns of an uninitialized optional here.)
        const bool measured = before.has_value() && after.has_value() && during.has_value();
        const double baseline = measured ? (*before + *after) / 2 : 0;
        const double cadence = LongestProgressIntervalSeconds(points, load_from_, load_to_);
        Json job = JsonObject();
        job.members["id"] = JsonString(id);
        job.members["before_steps_per_s"] = before ? Num(*before) : Json();
        job.members["after_steps_per_s"] = after ? Num(*after) : Json();
        job.members["baseline_steps_per_s"] = measured ? Num(baseline) : Json();
        job.members["load_steps_per_s"] = during ? Num(*during) : Json();
        job.members["ratio"] = measured && baseline > 0 ? Num(*during / baseline) : Json();
        job.members["longest_progress_interval_s"] = Num(cadence);
        Json series = JsonArray();  // [seconds since the tool started, step] per progress event
        for (const auto& [sequence, p] : points) {
          Json point = JsonArray();
          point.items = {Num(std::round(absl::ToDoubleSeconds(p.time - origin_) * 1000) / 1000),
                         Num(static_cast<double>(p.step))};
          series.items.push_back(point);
        }
        job.members["progress"] = series;
        jobs.items.push_back(job);
        if (measured) {
          baseline_sum += baseline;
          load_sum += *during;
        } else {
          complete = false;
        }
      }
    }
    training.members["jobs"] = jobs;
    training.members["baseline_steps_per_s"] = complete ? Num(baseline_sum) : Json();
    training.members["load_steps_per_s"] = complete ? Num(load_sum) : Json();
    training.members["ratio"] = complete && baseline_sum > 0 ? Num(load_sum / baseline_sum) : Json();
    Json windows = JsonObject();  // seconds since the tool started
    for (const auto& [name, from, to] : {std::tuple<const char*, absl::Time, absl::Time>{"before", before_from_, before_to_},
                                         {"load", load_from_, load_to_},
                                         {"after", after_from_, after_to_}}) {
      Json window = JsonArray();
      window.items = {Num(absl::ToDoubleSeconds(from - origin_)), Num(absl::ToDoubleSeconds(to - origin_))};
      windows.members[name] = window;
    }
    training.members["windows_s"] = windows;
    report_.members["training"] = training;

    if (rss_ != nullptr) {
      Json rss = JsonObject();
      const std::vector<RssSampler::Sample> samples = rss_->samples();
      int64_t max_kib = 0, max_in_window = 0;
      Json series = JsonArray();
      const double window_from = absl::ToDoubleSeconds(load_from_ - origin_);
      const double window_to = absl::ToDoubleSeconds(load_to_ - origin_);
      for (const RssSampler::Sample& s : samples) {
        max_kib = std::max(max_kib, s.kib);
        if (s.seconds >= window_from && s.seconds <= window_to) max_in_window = std::max(max_in_window, s.kib);
        Json point = JsonArray();
        point.items = {Num(std::round(s.seconds * 10) / 10), Num(static_cast<double>(s.kib))};
        series.items.push_back(point);
      }
      rss.members["pid"] = Num(o_.server_pid);
      rss.members["start_kib"] = samples.empty() ? Json() : Num(static_cast<double>(samples.front().kib));
      rss.members["load_start_kib"] = rss_load_start_ ? Num(static_cast<double>(*rss_load_start_)) : Json();
      rss.members["load_end_kib"] = rss_load_end_ ? Num(static_cast<double>(*rss_load_end_)) : Json();
      rss.members["max_in_load_kib"] = Num(static_cast<double>(max_in_window));
      rss.members["max_kib"] = Num(static_cast<double>(max_kib));
      rss.members["end_kib"] = samples.empty() ? Json() : Num(static_cast<double>(samples.back().kib));
      rss.members["samples"] = series;  // [seconds since start, KiB], once a second
      report_.members["server_rss"] = rss;
    }
  }

  const LoadOptions o_;
  std::ostream& log_;
  absl::Time origin_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::Slim::Stub>> stubs_;
  std::string dataset_, queued_quota_;
  std::vector<std::string> training_;
  std::vector<std::unique_ptr<WatchStream>> monitors_, streams_;
  std::unique_ptr<RssSampler> rss_;
  std::optional<int64_t> rss_load_start_, rss_load_end_;
  absl::Time before_from_, before_to_, load_from_, load_to_, after_from_, after_to_;
  double max_issue_lag_ms_ = 0;
  std::map<std::string, MethodStats> methods_;  // one per method, inserted before the first call
  std::mt19937_64 rng_;                         // the issuing thread's only
  Json report_;

  absl::Mutex mu_;
  std::vector<std::string> created_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, ProgressLog> progress_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<Json> RunLoad(const LoadOptions& options, std::ostream& log) {
  if (options.streams < 0 || options.rate <= 0 || options.duration_seconds <= 0 || options.jobs_training < 1) {
    return absl::InvalidArgumentError("streams >= 0, rate > 0, duration > 0 and at least one training job are needed");
  }
  LoadRun run(options, log);
  return run.Run();
}

std::string FormatSummary(const Json& report) {
  const auto num = [](const Json& o, const std::string& key) {
    const auto it = o.members.find(key);
    return it == o.members.end() || it->second.kind != Json::kNumber ? std::nan("") : it->second.number;
  };
  const auto at = [](const Json& o, const std::string& key) -> const Json& {
    static const Json* const kNull = new Json();
    const auto it = o.members.find(key);
    return it == o.members.end() ? *kNull : it->second;
  };
  std::string out;
  const Json& config = at(report, "config");
  out += absl::StrFormat("slim-load: %.0f s at %.0f requests/s (%s), %.0f WatchJob streams, %.0f training job(s); load average %s → %s\n",
                         num(config, "duration_s"), num(config, "rate_per_s"), at(config, "mix").text,
                         num(config, "streams"), num(config, "jobs_training"), at(report, "load_average_at_start").text,
                         at(report, "load_average_at_end").text);
  out += "requests (latency in ms from each call's scheduled time):\n";
  out += absl::StrFormat("  %-10s %7s %7s %8s %8s %8s %8s  %s\n", "method", "count", "ok", "p50", "p90", "p99", "max", "errors");
  for (const auto& [name, m] : at(report, "requests").members) {
    std::string errors;
    for (const auto& [code, n] : at(m, "errors").members) errors += absl::StrFormat("%s=%.0f ", code, n.number);
    const Json& l = at(m, "latency_ms");
    out += absl::StrFormat("  %-10s %7.0f %7.0f %8.2f %8.2f %8.2f %8.2f  %s\n", name, num(m, "count"), num(m, "ok"),
                           num(l, "p50"), num(l, "p90"), num(l, "p99"), num(l, "max"), errors.empty() ? "none" : errors);
  }
  const Json& streams = at(report, "streams");
  const Json& gaps = at(streams, "longest_gap_s");
  const Json& delivery = at(streams, "delivery_delay_ms");
  const Json& messages = at(streams, "messages_per_stream_in_window");
  out += absl::StrFormat(
      "streams: %.0f open, %.0f without events, %.0f ended before cancel; messages per stream in the window "
      "min %.0f p50 %.0f; longest gap per stream p50 %.2f s, max %.2f s; event delivery delay p50 %.1f ms, p99 %.1f "
      "ms, max %.1f ms\n",
      num(streams, "count"), num(streams, "streams_without_events"), num(streams, "ended_before_cancel"),
      num(messages, "min"),
      num(messages, "p50"), num(gaps, "p50"), num(gaps, "max"), num(delivery, "p50"), num(delivery, "p99"),
      num(delivery, "max"));
  const Json& training = at(report, "training");
  for (const Json& job : at(training, "jobs").items) {
    out += absl::StrFormat(
        "training %s: %.2f steps/s under load vs %.2f before and %.2f after (ratio %.3f); longest progress interval "
        "%.2f s\n",
        at(job, "id").text, num(job, "load_steps_per_s"), num(job, "before_steps_per_s"), num(job, "after_steps_per_s"),
        num(job, "ratio"), num(job, "longest_progress_interval_s"));
  }
  out += absl::StrFormat("training total: ratio %.3f (steps/s under load / mean of before and after)\n",
                         num(training, "ratio"));
  const Json& rss = at(report, "server_rss");
  if (rss.kind == Json::kObject) {
    out += absl::StrFormat("slimd RSS: start %.1f MiB, load start %.1f MiB, max in load %.1f MiB, load end %.1f MiB, end %.1f MiB\n",
                           num(rss, "start_kib") / 1024, num(rss, "load_start_kib") / 1024, num(rss, "max_in_load_kib") / 1024,
                           num(rss, "load_end_kib") / 1024, num(rss, "end_kib") / 1024);
  }
  const Json& cleanup = at(report, "cleanup");
  out += absl::StrFormat("cleanup: %.0f job(s) created under load, %.0f cancelled, %.0f of them had started\n",
                         num(cleanup, "created_jobs"), num(cleanup, "created_jobs_cancelled"),
                         num(cleanup, "created_jobs_that_started"));
  return out;
}

}  // namespace slim::load
