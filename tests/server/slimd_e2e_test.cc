// End to end with the real binaries: slimd with two declared 16 MiB CPU devices runs several
// tiny jobs at once whose quotas give them different chunk sizes on the same device; a
// higher-priority job makes room by shrinking a running one; one job is cancelled mid-run;
// slimd is killed with SIGKILL mid-training and restarted, and every job still completes with
// its whole event history. Also: the health service answers SERVING; with --database-url
// slimd keeps its records in PostgreSQL across restarts, and an unusable URL stops it at once
// with the reason; a killed slimd's workers die by themselves; and a fleet of three replicas on
// one PostgreSQL database spreads jobs, serves WatchJob and CancelJob for any job from any
// replica, shows every replica's devices and jobs on any replica's status page, and takes over
// the jobs of a replica killed mid-training; a replica stopped with SIGTERM hands its jobs (here
// a data-parallel one) to another.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/sha256.h"
#include "server/supervise/worker_process.h"
#include "slim/v1/slim.grpc.pb.h"
#include "tests/server/postgres_test_database.h"

namespace slim::server {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kMiB = 1 << 20;

// The body of GET `path` from the plain-HTTP address "host:port", "" when it cannot be had.
std::string HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &to.sin_addr) != 1) return "";
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string response;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + address + "\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buffer[65536];
      for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) response.append(buffer, n);
    }
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::unique_ptr<grpc::ClientContext> Context(int seconds = 60) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return context;
}

class SlimdE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/slimd_e2e." + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    socket_ = "unix:" + dir_ + "/slimd.sock";
  }
  void TearDown() override {
    if (slimd_ != nullptr) {
      slimd_->Terminate(30);
      slimd_->WaitForExit();
    }
    for (auto& [id, r] : replicas_) {
      if (r.process != nullptr) r.process->Terminate(30);
    }
    for (auto& [id, r] : replicas_) {
      if (r.process != nullptr) r.process->WaitForExit();
    }
    replicas_.clear();
    fs::remove_all(dir_);
  }

  // Starts slimd (with `extra_flags` after the usual ones) and waits until it accepts calls.
  // The devices are small and count quotas only (--worker-footprint 0), so that a few tiny jobs
  // pack onto them; WorkerFootprintsAreMeasuredAndCommitted checks footprints.
  void StartSlimd(const std::vector<std::string>& extra_flags = {}) {
    WorkerOptions o;
    o.argv = {SLIMD_BINARY, "--listen", socket_, "--data-dir", dir_ + "/data", "--devices", "cpu:16MiB,cpu:16MiB",
              "--worker-binary", SLIM_TRAIN_BINARY, "--checkpoint-every", "20", "--cancel-grace", "20",
              "--metrics-address", "127.0.0.1:0", "--worker-footprint", "0"};
    o.argv.insert(o.argv.end(), extra_flags.begin(), extra_flags.end());
    o.log_path = dir_ + "/slimd.log";
    o.on_exit = [this](const WorkerExit& e) { slimd_exit_ = e; };  // read after WaitForExit
    // A killed slimd leaves its socket file behind; the new one must not be confused with it.
    fs::remove(socket_.substr(std::strlen("unix:")));
    const int started_before = Count(Log(), "slimd: listening on");
    absl::StatusOr<std::unique_ptr<WorkerProcess>> p = WorkerProcess::Start(std::move(o));
    ASSERT_TRUE(p.ok()) << p.status();
    slimd_ = *std::move(p);
    // Serving once it says so (polled: the log is the only signal a separate process gives).
    for (int i = 0; i < 1200 && Count(Log(), "slimd: listening on") == started_before && !slimd_->exited(); ++i) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_GT(Count(Log(), "slimd: listening on"), started_before) << "slimd did not start; log:\n" << Log();
    channel_ = grpc::CreateChannel(socket_, grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(60)))
        << "slimd did not answer; log:\n" << Log();
    stub_ = v1::Slim::NewStub(channel_);
  }

  static int Count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }

  std::string Log() { return ReadFile(dir_ + "/slimd.log"); }

  // Log() and the logs of replicas (StartReplica), for failure messages.
  std::string AllLogs() {
    std::string all = Log();
    for (const auto& [id, r] : replicas_) all += "\n--- replica " + id + " ---\n" + ReadFile(r.log);
    return all;
  }

  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }

  // One slimd of a fleet: its own socket, log and devices; the shared data directory and
  // database.
  struct Replica {
    std::string socket, log;
    std::unique_ptr<WorkerProcess> process;
    WorkerExit exit;  // read after process->WaitForExit()
    std::unique_ptr<v1::Slim::Stub> stub;
  };

  void StartReplica(const std::string& id, const std::string& database_url, const std::string& lease_seconds,
                    const std::string& devices = "cpu:16MiB") {
    Replica& r = replicas_[id];
    r.socket = "unix:" + dir_ + "/" + id + ".sock";
    r.log = dir_ + "/replica-" + id + ".log";
    WorkerOptions o;
    o.argv = {SLIMD_BINARY, "--listen", r.socket, "--data-dir", dir_ + "/data", "--devices", devices,
              "--worker-binary", SLIM_TRAIN_BINARY, "--checkpoint-every", "20", "--cancel-grace", "20",
              "--metrics-address", "127.0.0.1:0", "--database-url", database_url, "--replica-id", id,
              "--lease-seconds", lease_seconds, "--worker-footprint", "0"};
    o.log_path = r.log;
    o.on_exit = [&r](const WorkerExit& e) { r.exit = e; };  // map nodes stay where they are
    absl::StatusOr<std::unique_ptr<WorkerProcess>> p = WorkerProcess::Start(std::move(o));
    ASSERT_TRUE(p.ok()) << p.status();
    r.process = *std::move(p);
    for (int i = 0; i < 1200 && Count(ReadFile(r.log), "slimd: listening on") == 0 && !r.process->exited(); ++i) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_GT(Count(ReadFile(r.log), "slimd: listening on"), 0) << "replica " << id << " did not start:\n"
                                                               << ReadFile(r.log);
    std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(r.socket, grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(60)));
    r.stub = v1::Slim::NewStub(channel);
  }

  // Like Get, through the replica `stub`.
  v1::Job GetThrough(v1::Slim::Stub* stub, const std::string& id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::GetJobResponse response;
    const grpc::Status s = stub->GetJob(Context().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.job();
  }

  std::string Upload(const std::string& text) {
    Sha256 sha;
    sha.Update(text.data(), text.size());
    auto context = Context();
    v1::UploadDatasetResponse response;
    auto writer = stub_->UploadDataset(context.get(), &response);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name("e2e");
    header.mutable_header()->set_size_bytes(static_cast<int64_t>(text.size()));
    header.mutable_header()->set_sha256(sha.HexDigest());
    writer->Write(header);
    v1::UploadDatasetRequest chunk;
    chunk.set_chunk(text);
    writer->Write(chunk);
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.dataset().id();
  }

  static v1::JobSpec Spec(const std::string& dataset, const std::string& quota, int steps) {
    v1::JobSpec spec;
    spec.mutable_model()->set_preset("tiny");
    spec.mutable_data()->add_train()->set_dataset(dataset);
    spec.mutable_training()->set_seq_len(1024);
    spec.mutable_training()->set_batch_size(2);
    spec.mutable_training()->set_steps(steps);
    spec.mutable_training()->mutable_optimizer()->set_lr(1e-3);
    spec.mutable_memory()->set_quota(quota);
    return spec;
  }

  v1::Job Create(const v1::JobSpec& spec, int priority) {
    v1::CreateJobRequest request;
    *request.mutable_spec() = spec;
    request.set_priority(priority);
    v1::CreateJobResponse response;
    const grpc::Status s = stub_->CreateJob(Context(120).get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.job();
  }

  v1::Job Get(const std::string& id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::GetJobResponse response;
    const grpc::Status s = stub_->GetJob(Context().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response.job();
  }

  // Reads the job's events from `after` until `until` returns true for one (or the stream ends).
  // Like a real client, retries a stream the transport broke (UNAVAILABLE) from the last event.
  // `stub`: the slimd to ask (default: the one StartSlimd started).
  std::vector<v1::JobEvent> WatchUntil(const std::string& id, int64_t after,
                                       const std::function<bool(const v1::JobEvent&)>& until, int seconds = 300,
                                       v1::Slim::Stub* stub = nullptr) {
    std::vector<v1::JobEvent> events;
    for (int attempt = 0; attempt < 3; ++attempt) {
      grpc::Status status;
      std::vector<v1::JobEvent> more =
          WatchOnce(stub != nullptr ? stub : stub_.get(), id, events.empty() ? after : events.back().sequence(), until,
                    seconds, &status);
      events.insert(events.end(), more.begin(), more.end());
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
        if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
          ADD_FAILURE() << "WatchJob " << id << ": " << status.error_message() << "\nslimd log:\n" << AllLogs();
        }
        return events;
      }
    }
    ADD_FAILURE() << "WatchJob " << id << ": unavailable three times; slimd log:\n" << AllLogs();
    return events;
  }

  std::vector<v1::JobEvent> WatchOnce(v1::Slim::Stub* stub, const std::string& id, int64_t after,
                                      const std::function<bool(const v1::JobEvent&)>& until, int seconds,
                                      grpc::Status* status) {
    auto context = Context(seconds);
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(after);
    auto reader = stub->WatchJob(context.get(), request);
    std::vector<v1::JobEvent> events;
    v1::WatchJobResponse item;
    while (reader->Read(&item)) {
      if (!item.has_event()) continue;
      events.push_back(item.event());
      if (until(item.event())) {
        context->TryCancel();
        break;
      }
    }
    *status = reader->Finish();
    return events;
  }

  std::string dir_, socket_;
  std::map<std::string, Replica> replicas_;  // fleet tests
  std::unique_ptr<WorkerProcess> slimd_;
  WorkerExit slimd_exit_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Slim::Stub> stub_;
};

TEST_F(SlimdE2eTest, PacksShrinksCancelsSurvivesSigkillAndCompletesEveryJob) {
  StartSlimd();

  // Health: grpc.health.v1.Health/Check with an empty request → {status: SERVING} = 08 01.
  {
    grpc::GenericStub generic(channel_);
    grpc::ByteBuffer request, response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Slice empty;
    request = grpc::ByteBuffer(&empty, 1);
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        status = s;
                        done.Notify();
                      });
    done.WaitForNotification();
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const grpc::Slice& s : slices) bytes += std::string(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  }

  std::string text;
  for (int i = 0; text.size() < 120000; ++i) text += "slim packs fine-tuning jobs under memory quotas " + std::to_string(i % 97) + ".\n";
  const std::string dataset = Upload(text);

  // Three jobs whose quotas give three chunk sizes; best fit puts all of them on one device.
  const std::map<std::string, std::string> quotas = {{"a", "8MiB"}, {"b", "4MiB"}, {"c", "3MiB"}};
  std::map<std::string, v1::Job> jobs;
  std::map<std::string, int64_t> planned_chunk;
  for (const auto& [name, quota] : quotas) {
    v1::PlanJobRequest plan_request;
    *plan_request.mutable_spec() = Spec(dataset, quota, 250);
    v1::PlanJobResponse plan;
    ASSERT_TRUE(stub_->PlanJob(Context(120).get(), plan_request, &plan).ok());
    planned_chunk[name] = plan.chunk_size();
    jobs[name] = Create(Spec(dataset, quota, 250), 0);
    EXPECT_EQ(jobs[name].chunk_size(), plan.chunk_size());
  }
  EXPECT_NE(planned_chunk["a"], planned_chunk["b"]);
  EXPECT_NE(planned_chunk["b"], planned_chunk["c"]);
  // A long job on the other device, to be shrunk and then cancelled.
  jobs["long"] = Create(Spec(dataset, "6MiB", 1000000), 0);
  for (const auto& [name, job] : jobs) {
    WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  }
  std::map<std::string, std::string> device;
  for (const auto& [name, job] : jobs) device[name] = Get(job.id()).device();
  EXPECT_EQ(device["a"], device["b"]);
  EXPECT_EQ(device["b"], device["c"]);
  EXPECT_NE(device["long"], device["a"]);

  // 12 MiB at priority 5 fits nowhere (1 and 10 MiB free): the long job shrinks to make room.
  jobs["vip"] = Create(Spec(dataset, "12MiB", 250), 5);
  const std::vector<v1::JobEvent> long_events =
      WatchUntil(jobs["long"].id(), 0, [](const v1::JobEvent& e) { return e.kind() == "shrunk"; });
  ASSERT_FALSE(long_events.empty());
  const v1::JobEvent& shrunk = long_events.back();
  ASSERT_EQ(shrunk.kind(), "shrunk");
  EXPECT_LT(shrunk.quota_bytes(), 6 * kMiB);
  EXPECT_LT(shrunk.chunk_size(), jobs["long"].chunk_size());
  EXPECT_LE(shrunk.predicted_peak_bytes(), shrunk.quota_bytes());
  EXPECT_NE(shrunk.message().find(jobs["vip"].id()), std::string::npos) << shrunk.message();
  WatchUntil(jobs["vip"].id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  EXPECT_EQ(Get(jobs["vip"].id()).device(), device["long"]);

  // Cancel the long job mid-run.
  v1::CancelJobRequest cancel;
  cancel.set_id(jobs["long"].id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &cancelled).ok());
  const std::vector<v1::JobEvent> cancel_events =
      WatchUntil(jobs["long"].id(), cancelled.job().last_sequence(), [](const v1::JobEvent&) { return false; });
  ASSERT_FALSE(cancel_events.empty());
  EXPECT_EQ(cancel_events.back().kind(), "cancelled");

  // Kill slimd mid-training, after every remaining job has a checkpoint.
  for (const char* name : {"a", "b", "c", "vip"}) {
    WatchUntil(jobs[name].id(), 0, [](const v1::JobEvent& e) { return e.kind() == "checkpoint"; });
    EXPECT_EQ(Get(jobs[name].id()).state(), v1::JOB_STATE_RUNNING) << name << " finished too early for the test";
  }
  slimd_->Kill();
  slimd_->WaitForExit();
  slimd_.reset();
  StartSlimd();

  for (const char* name : {"a", "b", "c", "vip"}) {
    const std::vector<v1::JobEvent> history = WatchUntil(jobs[name].id(), 0, [](const v1::JobEvent&) { return false; });
    ASSERT_FALSE(history.empty()) << name;
    bool requeued = false, resumed = false;
    for (size_t i = 0; i < history.size(); ++i) {
      EXPECT_EQ(history[i].sequence(), static_cast<int64_t>(i + 1)) << name << ": events must be contiguous";
      requeued |= history[i].kind() == "requeued";
      resumed |= history[i].kind() == "planned" && history[i].message().find("resumed from step") != std::string::npos;
    }
    EXPECT_EQ(history.front().kind(), "queued") << name;
    EXPECT_EQ(history.back().kind(), "succeeded") << name << ": " << history.back().message();
    EXPECT_TRUE(requeued) << name;
    EXPECT_TRUE(resumed) << name;
    const v1::Job job = Get(jobs[name].id());
    EXPECT_EQ(job.progress().step(), 250) << name;
    EXPECT_GT(job.observed_peak_bytes(), 0) << name;
    EXPECT_LE(job.observed_peak_bytes(), job.quota_bytes()) << name;
    if (planned_chunk.count(name)) {
      EXPECT_EQ(job.chunk_size(), planned_chunk[name]) << name;
    }
  }
  EXPECT_EQ(Get(jobs["long"].id()).state(), v1::JOB_STATE_CANCELLED);
}


// Shrink-to-fit keeps the mathematics: a job shrunk for a higher-priority one (smaller chunk
// size, possibly another start-state mode) and grown back when that one ends trains exactly
// like its twin that ran at its requested quota throughout — same data order, one BLAS thread
// each (--worker-cpu-threads 1), so the only difference is the chunk size. Its observed peak
// is the current quota's: never above the quota it runs in.
TEST_F(SlimdE2eTest, ShrunkJobGrowsBackAndTrainsLikeItsUnshrunkTwin) {
  StartSlimd({"--devices", "cpu:16MiB", "--worker-cpu-threads", "1"});
  std::string text;
  for (int i = 0; text.size() < 120000; ++i) text += "slim grows shrunk jobs back when room returns " + std::to_string(i % 89) + ".\n";
  const std::string dataset = Upload(text);
  auto spec = [&](const std::string& quota, int steps) {
    v1::JobSpec s = Spec(dataset, quota, steps);
    s.mutable_eval()->set_every(20);
    return s;
  };
  const v1::Job job = Create(spec("6MiB", 160), 0);
  WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  // 12 MiB at priority 5 does not fit beside 6 MiB on 16: the job shrinks to make room.
  const v1::Job vip = Create(spec("12MiB", 20), 5);
  const std::vector<v1::JobEvent> vip_events = WatchUntil(vip.id(), 0, [](const v1::JobEvent&) { return false; });
  ASSERT_FALSE(vip_events.empty());
  EXPECT_EQ(vip_events.back().kind(), "succeeded") << vip_events.back().message();

  const std::vector<v1::JobEvent> events = WatchUntil(job.id(), 0, [](const v1::JobEvent&) { return false; });
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().kind(), "succeeded") << events.back().message();
  const v1::JobEvent *shrunk = nullptr, *grown = nullptr;
  std::map<int64_t, double> evals;  // step → validation loss
  double final_loss = 0;
  for (const v1::JobEvent& e : events) {
    if (e.kind() == "shrunk" && shrunk == nullptr) shrunk = &e;
    if (e.kind() == "grown" && grown == nullptr) grown = &e;
    if (e.kind() == "eval") evals[e.progress().step()] = e.progress().eval_loss();
    if (e.kind() == "progress") final_loss = e.progress().loss();
  }
  ASSERT_NE(shrunk, nullptr) << "the job was never shrunk";
  ASSERT_NE(grown, nullptr) << "the job never grew back";
  // While shrunk, the peak it reports is the smaller quota's, and within it.
  int shrunk_progress = 0;
  for (const v1::JobEvent& e : events) {
    if (e.kind() != "progress" || e.sequence() < shrunk->sequence() || e.sequence() > grown->sequence()) continue;
    EXPECT_LE(e.observed_peak_bytes(), shrunk->quota_bytes()) << "step " << e.progress().step();
    ++shrunk_progress;
  }
  EXPECT_GT(shrunk_progress, 0);
  EXPECT_LT(shrunk->sequence(), grown->sequence());
  EXPECT_LT(shrunk->quota_bytes(), 6 * kMiB);
  EXPECT_LT(shrunk->chunk_size(), job.chunk_size());
  EXPECT_EQ(grown->quota_bytes(), 6 * kMiB);
  EXPECT_EQ(grown->chunk_size(), job.chunk_size());  // the requested quota's plan again
  const v1::Job done = Get(job.id());
  EXPECT_EQ(done.quota_bytes(), 6 * kMiB);
  EXPECT_EQ(done.requested_quota_bytes(), 6 * kMiB);
  EXPECT_GT(done.observed_peak_bytes(), 0);
  EXPECT_LE(done.observed_peak_bytes(), done.quota_bytes());

  // The twin, alone on the device: never shrunk.
  const v1::Job twin = Create(spec("6MiB", 160), 0);
  const std::vector<v1::JobEvent> twin_events = WatchUntil(twin.id(), 0, [](const v1::JobEvent&) { return false; });
  ASSERT_FALSE(twin_events.empty());
  EXPECT_EQ(twin_events.back().kind(), "succeeded");
  std::map<int64_t, double> twin_evals;
  double twin_final_loss = 0;
  for (const v1::JobEvent& e : twin_events) {
    EXPECT_NE(e.kind(), "shrunk");
    if (e.kind() == "eval") twin_evals[e.progress().step()] = e.progress().eval_loss();
    if (e.kind() == "progress") twin_final_loss = e.progress().loss();
  }
  ASSERT_EQ(evals.size(), twin_evals.size());
  ASSERT_GE(evals.size(), 7u);
  for (const auto& [step, loss] : twin_evals) {
    ASSERT_TRUE(evals.count(step)) << step;
    std::printf("[ twin ] step %lld validation loss shrunk job %.9f twin %.9f (%.1e)\n",
                static_cast<long long>(step), evals[step], loss, std::abs(evals[step] - loss) / loss);
    EXPECT_NEAR(evals[step], loss, 1e-4 * loss) << "step " << step;
  }
  EXPECT_NEAR(final_loss, twin_final_loss, 1e-4 * twin_final_loss);
}

// SIGTERM while 3 jobs train, 60 WatchJob streams are open and unary calls keep coming: slimd
// checkpoints and requeues every job, delivers those last events on every stream, ends each
// stream itself (UNAVAILABLE naming the shutdown and the sequence to resume from) before it
// exits with status 0, and leaves no worker process behind.
// A worker process's own memory (LibTorch, the BLAS) is measured at start and committed beside
// each quota: a device declared smaller than one worker takes no job, and on a larger one a
// running job commits its quota plus the footprint (issue 18, item 8).
TEST_F(SlimdE2eTest, WorkerFootprintsAreMeasuredAndCommitted) {
  StartSlimd({"--devices", "cpu:64MiB,cpu:2GiB", "--worker-footprint", "auto"});
  auto devices = [&] {
    v1::ListDevicesResponse response;
    const grpc::Status s = stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  };
  const v1::ListDevicesResponse before = devices();
  ASSERT_EQ(before.devices_size(), 2);
  const int64_t footprint = before.devices(1).worker_footprint_bytes();
  // LibTorch's CPU runtime alone is tens of MiB resident; the CPU devices share one measurement.
  EXPECT_GT(footprint, 32 * kMiB);
  EXPECT_LT(footprint, 2048 * kMiB);
  EXPECT_EQ(before.devices(0).worker_footprint_bytes(), footprint);
  EXPECT_EQ(before.devices(1).committed_bytes(), 0);

  const std::string dataset = Upload(std::string(40000, 'x'));
  const v1::Job job = Create(Spec(dataset, "8MiB", 400), 0);
  WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  const v1::ListDevicesResponse during = devices();
  // Placed on the device that holds a worker, committing its quota and one footprint.
  EXPECT_EQ(during.devices(0).job_ids_size(), 0);
  ASSERT_EQ(during.devices(1).job_ids_size(), 1);
  EXPECT_EQ(during.devices(1).committed_bytes(), 8 * kMiB + footprint);
  EXPECT_LE(during.devices(1).committed_bytes(), during.devices(1).capacity_bytes());
  // What the system attributes to the worker: its resident set, LibTorch included, per job and
  // for the device.
  ASSERT_EQ(during.devices(1).job_process_bytes_size(), 1);
  EXPECT_GT(during.devices(1).job_process_bytes(0), 32 * kMiB);
  EXPECT_EQ(during.devices(1).process_bytes(), during.devices(1).job_process_bytes(0));
  EXPECT_EQ(during.devices(0).process_bytes(), 0);
  EXPECT_NE(Log().find("slimd: worker footprint on cpu: "), std::string::npos) << Log();  // says how it measured
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  v1::CancelJobResponse cancelled;
  EXPECT_TRUE(stub_->CancelJob(Context().get(), cancel, &cancelled).ok());

  // A quota that fits 2 GiB by itself but not beside the footprint is refused at creation,
  // naming what a device holds.
  v1::CreateJobRequest request;
  *request.mutable_spec() = Spec(dataset, "2GiB", 10);
  v1::CreateJobResponse response;
  const grpc::Status refused = stub_->CreateJob(Context(120).get(), request, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find("is more than the largest cpu device holds"), std::string::npos)
      << refused.error_message();
}

TEST_F(SlimdE2eTest, GracefulShutdownUnderLoadClosesEveryStream) {
  StartSlimd();
  const std::string dataset = Upload(std::string(200000, 'x') + "the performer is linear in its chunk size.\n");
  std::vector<std::string> ids;
  for (const char* quota : {"4MiB", "4MiB", "6MiB"}) ids.push_back(Create(Spec(dataset, quota, 100000), 0).id());
  for (const std::string& id : ids) {
    WatchUntil(id, 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  }

  struct StreamResult {
    grpc::Status status;
    bool saw_requeued = false;
  };
  constexpr int kStreams = 60;
  std::vector<StreamResult> results(kStreams);
  std::atomic<int> opened{0};
  std::vector<std::thread> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.emplace_back([&, i] {
      auto context = Context(300);
      v1::WatchJobRequest request;
      request.set_id(ids[i % ids.size()]);
      auto reader = stub_->WatchJob(context.get(), request);
      v1::WatchJobResponse item;
      bool counted = false;
      while (reader->Read(&item)) {
        if (!counted) opened.fetch_add(1), counted = true;
        results[i].saw_requeued |= item.has_event() && item.event().kind() == "requeued";
      }
      results[i].status = reader->Finish();
    });
  }
  std::atomic<bool> stop_load{false};
  std::atomic<int> load_calls{0}, load_failures{0};
  std::thread load([&] {
    while (!stop_load.load()) {
      v1::GetJobRequest get;
      get.set_id(ids[load_calls % ids.size()]);
      v1::GetJobResponse got;
      const grpc::Status s = stub_->GetJob(Context(10).get(), get, &got);
      // Reads are served until the server closes; a call racing that close is refused
      // (UNAVAILABLE) or cut off by gRPC (CANCELLED). Anything else — an internal error, a call
      // hanging to its deadline — is a failure.
      if (!s.ok() && s.error_code() != grpc::StatusCode::UNAVAILABLE && s.error_code() != grpc::StatusCode::CANCELLED) {
        load_failures.fetch_add(1);
        ADD_FAILURE() << "GetJob during shutdown: " << s.error_code() << " " << s.error_message();
      }
      load_calls.fetch_add(1);
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  for (int i = 0; i < 600 && opened.load() < kStreams; ++i) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(opened.load(), kStreams);

  slimd_->Terminate(120);  // SIGTERM now; SIGKILL only if it is still alive after 120 s
  slimd_->WaitForExit();
  stop_load = true;
  load.join();
  for (std::thread& t : streams) t.join();

  EXPECT_FALSE(slimd_exit_.signaled) << "slimd did not stop by itself; log:\n" << Log();
  EXPECT_EQ(slimd_exit_.exit_status, 0) << Log();
  EXPECT_EQ(Count(Log(), "slimd: stopped (shutdown took"), 1) << Log();
  EXPECT_EQ(load_failures.load(), 0);
  EXPECT_GT(load_calls.load(), 0);
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(results[i].status.error_code(), grpc::StatusCode::UNAVAILABLE) << i << ": " << results[i].status.error_message();
    EXPECT_NE(results[i].status.error_message().find("slimd is shutting down; watch again with after_sequence"),
              std::string::npos)
        << i << ": the stream must be ended by slimd, not by its exit: " << results[i].status.error_message();
    EXPECT_TRUE(results[i].saw_requeued) << i << ": the last event (requeued) must reach every stream";
  }
  for (const std::string& id : ids) {
    std::ifstream pid_file(dir_ + "/data/jobs/" + id + "/worker.pid");
    long pid = 0;
    if (pid_file >> pid) {
      EXPECT_NE(::kill(static_cast<pid_t>(pid), 0), 0) << "worker " << pid << " of " << id << " outlived slimd";
    }
  }
  slimd_.reset();
}

// slimd with --database-url keeps jobs, events and ids in PostgreSQL (no slimd.db) and finds
// them there after a restart.
TEST_F(SlimdE2eTest, PostgresStoreKeepsJobsAcrossRestarts) {
  const absl::StatusOr<std::string> server = pgtest::PostgresServerUrl();
  ASSERT_TRUE(server.ok()) << server.status();
  if (server->empty()) GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL or run through ctest";
  const pgtest::TestDatabase database(*server);
  StartSlimd({"--database-url", database.url()});

  std::string text;
  for (int i = 0; text.size() < 60000; ++i) text += "slim keeps its jobs in postgres " + std::to_string(i % 89) + ".\n";
  const std::string dataset = Upload(text);
  const v1::Job job = Create(Spec(dataset, "8MiB", 30), 0);
  ASSERT_FALSE(job.id().empty());
  const std::vector<v1::JobEvent> history = WatchUntil(
      job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; });
  ASSERT_FALSE(history.empty());
  ASSERT_EQ(history.back().kind(), "succeeded") << history.back().message() << "\nslimd log:\n" << Log();
  slimd_->Terminate(30);
  slimd_->WaitForExit();
  slimd_.reset();

  EXPECT_FALSE(fs::exists(dir_ + "/data/slimd.db"));
  EXPECT_EQ(database.Query("SELECT COUNT(*) FROM events WHERE job_id = '" + job.id() + "'"),
            std::to_string(history.size()));
  EXPECT_EQ(database.Query("SELECT COUNT(*) FROM datasets WHERE id = '" + dataset + "'"), "1");

  StartSlimd({"--database-url", database.url()});
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SUCCEEDED);
  const std::vector<v1::JobEvent> reread = WatchUntil(job.id(), 0, [](const v1::JobEvent&) { return false; });
  ASSERT_EQ(reread.size(), history.size());
  for (size_t i = 0; i < reread.size(); ++i) {
    EXPECT_EQ(reread[i].sequence(), static_cast<int64_t>(i + 1));
    EXPECT_EQ(reread[i].kind(), history[i].kind());
  }
  const v1::Job second = Create(Spec(dataset, "8MiB", 1), 0);
  EXPECT_NE(second.id(), job.id());  // the id counter lives in the database too
  EXPECT_EQ(database.Query("SELECT COUNT(*) FROM jobs"), "2");
}

// A process that runs (not gone, not a zombie): zombies have an empty command line.
bool ProcessRuns(long pid) {
  std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
  return cmdline.good() && cmdline.peek() != std::ifstream::traits_type::eof();
}

// The worker pid a "started" event names ("worker pid 123 on cpu:0 ...").
long StartedPid(const v1::JobEvent& started) {
  const std::string& m = started.message();
  const size_t at = m.find("worker pid ");
  return at == std::string::npos ? 0 : std::atol(m.c_str() + at + std::strlen("worker pid "));
}

// A killed slimd leaves no worker running for long: each dies at its next event write (the
// event pipe has no reader any more: SIGPIPE), without a new slimd to clean up after it.
TEST_F(SlimdE2eTest, WorkersOfAKilledSlimdDieByThemselves) {
  StartSlimd();
  const std::string dataset = Upload(std::string(200000, 'y') + "orphaned workers must not train on.\n");
  const v1::Job job = Create(Spec(dataset, "8MiB", 1000000), 0);
  const std::vector<v1::JobEvent> events =
      WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
  long pid = 0;
  for (const v1::JobEvent& e : events) {
    if (e.kind() == "started") pid = StartedPid(e);
  }
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(ProcessRuns(pid));
  slimd_->Kill();
  slimd_->WaitForExit();
  slimd_.reset();
  for (int i = 0; i < 1200 && ProcessRuns(pid); ++i) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(ProcessRuns(pid)) << "worker " << pid << " kept running after its slimd was killed";
}

// Three replicas (one 16 MiB CPU device each) on one PostgreSQL database and one data
// directory, leases of 3 s. Six jobs submitted through one replica spread over all three; a
// job is watched live through a replica that does not run it; a job is cancelled through a
// replica that does not run it; one replica is SIGKILLed mid-training and its jobs are taken
// over after the lease, resume from their checkpoints on the others and succeed, with
// complete, contiguous histories (watched through a surviving replica across the kill), and
// never with two workers at once.
TEST_F(SlimdE2eTest, PostgresFleetSpreadsJobsServesWatchesAnywhereAndSurvivesASigkilledReplica) {
  const absl::StatusOr<std::string> server = pgtest::PostgresServerUrl();
  ASSERT_TRUE(server.ok()) << server.status();
  if (server->empty()) GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL or run through ctest";
  const pgtest::TestDatabase database(*server);
  const std::vector<std::string> names = {"r1", "r2", "r3"};
  for (const std::string& name : names) {
    StartReplica(name, database.url(), "3");
    ASSERT_FALSE(HasFatalFailure());
  }
  // Uploads, submissions and plain reads go through r1.
  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_["r1"].socket, grpc::InsecureChannelCredentials()));

  std::string text;
  for (int i = 0; text.size() < 120000; ++i) text += "replicas share one queue of fine-tuning jobs " + std::to_string(i % 83) + ".\n";
  const std::string dataset = Upload(text);
  // 8 MiB each: two fit a replica's device, so six need all three replicas. The last one is
  // long, to be cancelled.
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 6; ++i) jobs.push_back(Create(Spec(dataset, "8MiB", i == 5 ? 1000000 : 250), 0));
  std::map<std::string, std::vector<std::string>> by_replica;  // replica → its jobs
  std::map<std::string, std::string> runner;                   // job → replica
  for (const v1::Job& job : jobs) {
    const std::vector<v1::JobEvent> events =
        WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "progress"; });
    ASSERT_FALSE(events.empty()) << AllLogs();
    const v1::Job now = Get(job.id());
    ASSERT_EQ(now.state(), v1::JOB_STATE_RUNNING) << job.id();
    ASSERT_TRUE(replicas_.count(now.replica())) << job.id() << " runs on '" << now.replica() << "'";
    runner[job.id()] = now.replica();
    by_replica[now.replica()].push_back(job.id());
    for (const v1::JobEvent& e : events) {
      if (e.kind() == "started") {
        EXPECT_NE(e.message().find("of replica " + now.replica()), std::string::npos) << e.message();
      }
    }
  }
  EXPECT_GE(by_replica.size(), 2u) << "jobs did not spread over replicas";
  for (const auto& [replica, ids] : by_replica) EXPECT_LE(ids.size(), 2u) << replica << " holds more than its device";

  // Any replica's status page shows the whole fleet: a section per replica, each running job's
  // quota in its own replica's section (publications lag by up to a quarter lease).
  {
    const std::string log = ReadFile(replicas_["r2"].log);
    const std::string marker = "status page on http://";
    const size_t at = log.find(marker);
    ASSERT_NE(at, std::string::npos) << log;
    const std::string address = log.substr(at + marker.size(), log.find('/', at + marker.size()) - at - marker.size());
    std::string page, misplaced;
    for (int attempt = 0; attempt < 100; ++attempt) {
      page = HttpGet(address, "/");
      misplaced.clear();
      for (const std::string& name : names) {
        if (page.find("<div class=\"replica\" id=\"replica-" + name + "\">") == std::string::npos) {
          misplaced += " no section for " + name + ";";
        }
      }
      for (const auto& [id, replica] : runner) {
        const size_t segment = page.find("class=\"seg\" data-job=\"" + id + "\"");
        const size_t section = page.rfind("<div class=\"replica\" id=\"replica-", segment);
        const std::string its_section = "<div class=\"replica\" id=\"replica-" + replica + "\"";
        if (segment == std::string::npos || section == std::string::npos ||
            page.compare(section, its_section.size(), its_section) != 0) {
          misplaced += " " + id + " not in " + replica + "'s section;";
        }
      }
      if (misplaced.empty()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(misplaced, "") << page;
    EXPECT_NE(page.find("<h3>Replica r2 (this one)</h3>"), std::string::npos);
  }

  // A replica other than `not_this` (and other than `nor_this`).
  const auto other = [&](const std::string& not_this, const std::string& nor_this = "") {
    for (const std::string& name : names) {
      if (name != not_this && name != nor_this) return name;
    }
    return std::string();
  };

  // Cancel the long job through a replica that does not run it: its owner carries it out.
  const std::string long_job = jobs[5].id();
  {
    v1::CancelJobRequest cancel;
    cancel.set_id(long_job);
    v1::CancelJobResponse response;
    const grpc::Status s = replicas_[other(runner[long_job])].stub->CancelJob(Context().get(), cancel, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const std::vector<v1::JobEvent> history = WatchUntil(
        long_job, 0, [](const v1::JobEvent&) { return false; }, 300, replicas_[other(runner[long_job])].stub.get());
    ASSERT_FALSE(history.empty());
    EXPECT_EQ(history.back().kind(), "cancelled") << history.back().message();
    bool requested = false;
    for (const v1::JobEvent& e : history) {
      requested |= e.kind() == "cancelling" && e.message().find("requested through another replica") != std::string::npos;
    }
    EXPECT_TRUE(requested);
  }

  // The victim runs jobs[0]; `watched` is a job on another replica, watched live through the
  // third replica; the victim's jobs are watched through a survivor across the kill.
  const std::string victim = runner[jobs[0].id()];
  std::string watched;
  for (const v1::Job& job : jobs) {
    if (job.id() != long_job && runner[job.id()] != victim && watched.empty()) watched = job.id();
  }
  ASSERT_FALSE(watched.empty()) << "every job ran on " << victim;
  const std::string watcher = other(victim, runner[watched]);
  const std::string survivor = other(victim);
  std::vector<std::string> victim_jobs;
  for (const std::string& id : by_replica[victim]) {
    if (id != long_job) victim_jobs.push_back(id);
  }

  std::map<std::string, std::vector<v1::JobEvent>> histories;
  absl::Mutex histories_mu;
  std::vector<std::thread> watches;
  const auto watch_to_the_end = [&](const std::string& id, const std::string& through) {
    watches.emplace_back([&, id, through] {
      std::vector<v1::JobEvent> history =
          WatchUntil(id, 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; }, 600,
                     replicas_[through].stub.get());
      absl::MutexLock lock(&histories_mu);
      histories[id] = std::move(history);
    });
  };
  ASSERT_EQ(Get(watched).state(), v1::JOB_STATE_RUNNING) << "finished too early to be watched live";
  watch_to_the_end(watched, watcher);
  for (const std::string& id : victim_jobs) watch_to_the_end(id, survivor);

  // Kill the victim once each of its jobs has a checkpoint to resume from.
  std::vector<long> victim_pids;
  for (const std::string& id : victim_jobs) {
    const std::vector<v1::JobEvent> events = WatchUntil(
        id, 0, [](const v1::JobEvent& e) { return e.kind() == "checkpoint"; }, 300, replicas_[survivor].stub.get());
    for (const v1::JobEvent& e : events) {
      if (e.kind() == "started") victim_pids.push_back(StartedPid(e));
    }
    EXPECT_EQ(Get(id).state(), v1::JOB_STATE_RUNNING) << id << " finished too early for the test";
  }
  replicas_[victim].process->Kill();
  replicas_[victim].process->WaitForExit();
  // From here on plain calls go through a survivor.
  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_[survivor].socket, grpc::InsecureChannelCredentials()));
  for (std::thread& watch : watches) watch.join();

  // Watched live through a replica that did not run it, to the end.
  ASSERT_TRUE(histories.count(watched));
  ASSERT_FALSE(histories[watched].empty());
  EXPECT_EQ(histories[watched].back().kind(), "succeeded") << histories[watched].back().message() << AllLogs();
  EXPECT_EQ(Get(watched).replica(), runner[watched]);

  for (const std::string& id : victim_jobs) {
    const std::vector<v1::JobEvent>& history = histories[id];
    ASSERT_FALSE(history.empty()) << id;
    EXPECT_EQ(history.front().kind(), "queued") << id;
    EXPECT_EQ(history.back().kind(), "succeeded") << id << ": " << history.back().message() << AllLogs();
    bool requeued = false, resumed = false;
    int started = 0;
    for (size_t i = 0; i < history.size(); ++i) {
      const v1::JobEvent& e = history[i];
      EXPECT_EQ(e.sequence(), static_cast<int64_t>(i + 1)) << id << ": events must be contiguous";
      requeued |= e.kind() == "requeued" && e.message().find("replica " + victim + " stopped renewing its lease") !=
                                                 std::string::npos;
      resumed |= e.kind() == "planned" && e.message().find("resumed from step") != std::string::npos;
      if (e.kind() == "started") {
        ++started;
        // A worker starts only from the queue: never while another one runs the job.
        ASSERT_GT(i, 0u);
        EXPECT_EQ(history[i - 1].state(), v1::JOB_STATE_QUEUED) << id << ": " << history[i - 1].kind() << " before "
                                                                << e.message();
        if (started > 1) {
          EXPECT_EQ(e.message().find("of replica " + victim), std::string::npos) << e.message();
        }
      }
    }
    EXPECT_TRUE(requeued) << id;
    EXPECT_TRUE(resumed) << id;
    EXPECT_GE(started, 2) << id;
    const v1::Job job = Get(id);
    EXPECT_EQ(job.attempts(), started) << id;
    EXPECT_EQ(job.progress().step(), 250) << id;
    EXPECT_NE(job.replica(), victim) << id;
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << id;
  }
  // The victim's workers did not outlive it (they die at their next event, or the replica
  // that takes their jobs over ends them before starting new ones).
  for (long pid : victim_pids) EXPECT_FALSE(ProcessRuns(pid)) << "worker " << pid << " of " << victim;
  // Every other job ends too.
  for (const v1::Job& job : jobs) {
    if (job.id() == long_job) continue;
    const std::vector<v1::JobEvent> rest = WatchUntil(
        job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; }, 600);
    ASSERT_FALSE(rest.empty());
    EXPECT_EQ(rest.back().kind(), "succeeded") << job.id() << ": " << rest.back().message();
  }
  EXPECT_EQ(database.Query("SELECT COUNT(*) FROM jobs WHERE owner IS NOT NULL"), "0");
}

// Self-fencing: a replica that cannot reach the database for 2/3 of its lease stops its
// workers (another replica could take their jobs over after the lease); once the database is
// back it requeues the job, which resumes from its checkpoint and succeeds.
TEST_F(SlimdE2eTest, PostgresFleetReplicaCutOffFromTheDatabaseStopsItsWorkers) {
  const absl::StatusOr<std::string> server = pgtest::PostgresServerUrl();
  ASSERT_TRUE(server.ok()) << server.status();
  if (server->empty()) GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL or run through ctest";
  const pgtest::TestDatabase database(*server);
  StartReplica("r1", database.url(), "3");
  ASSERT_FALSE(HasFatalFailure());
  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_["r1"].socket, grpc::InsecureChannelCredentials()));
  const std::string dataset = Upload(std::string(150000, 'z') + "a replica without its database must stop.\n");
  const v1::Job job = Create(Spec(dataset, "8MiB", 250), 0);
  long pid = 0;
  for (const v1::JobEvent& e : WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "checkpoint"; })) {
    if (e.kind() == "started") pid = StartedPid(e);
  }
  ASSERT_GT(pid, 0);
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING) << "finished too early for the test";

  // The database refuses every connection, and drops the ones it had.
  database.Admin("ALTER DATABASE " + database.name() + " ALLOW_CONNECTIONS false");
  database.TerminateConnections();
  const std::string& log = replicas_["r1"].log;
  for (int i = 0; i < 1200 && Count(ReadFile(log), "stopping its 1 worker(s)") == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const bool fenced = Count(ReadFile(log), "stopping its 1 worker(s)") > 0;
  for (int i = 0; i < 1200 && ProcessRuns(pid); ++i) absl::SleepFor(absl::Milliseconds(50));
  const bool worker_stopped = !ProcessRuns(pid);
  database.Admin("ALTER DATABASE " + database.name() + " ALLOW_CONNECTIONS true");
  ASSERT_TRUE(fenced) << AllLogs();
  EXPECT_TRUE(worker_stopped) << "worker " << pid;

  const std::vector<v1::JobEvent> history = WatchUntil(
      job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; }, 600);
  ASSERT_FALSE(history.empty());
  EXPECT_EQ(history.back().kind(), "succeeded") << history.back().message() << AllLogs();
  bool requeued = false, resumed = false;
  for (size_t i = 0; i < history.size(); ++i) {
    EXPECT_EQ(history[i].sequence(), static_cast<int64_t>(i + 1));
    requeued |= history[i].kind() == "requeued";
    resumed |= history[i].kind() == "planned" && history[i].message().find("resumed from step") != std::string::npos;
  }
  EXPECT_TRUE(requeued);
  EXPECT_TRUE(resumed);
  EXPECT_EQ(Get(job.id()).attempts(), 2);
}

// A replica stopped with SIGTERM hands its jobs over: its workers checkpoint and stop, their
// jobs go back to the queue, and another replica resumes them — here a data-parallel job, whose
// two ranks move together to the other replica's two devices.
TEST_F(SlimdE2eTest, PostgresFleetSigtermedReplicaHandsItsDataParallelJobToAnother) {
  const absl::StatusOr<std::string> server = pgtest::PostgresServerUrl();
  ASSERT_TRUE(server.ok()) << server.status();
  if (server->empty()) GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL or run through ctest";
  const pgtest::TestDatabase database(*server);
  for (const std::string name : {"r1", "r2"}) {
    StartReplica(name, database.url(), "3", "cpu:16MiB,cpu:16MiB");
    ASSERT_FALSE(HasFatalFailure());
  }
  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_["r1"].socket, grpc::InsecureChannelCredentials()));
  const std::string dataset = Upload(std::string(150000, 'd') + "two ranks share every batch of this job.\n");
  v1::JobSpec spec = Spec(dataset, "8MiB", 250);
  spec.mutable_data_parallel()->set_workers(2);
  const v1::Job job = Create(spec, 0);
  WatchUntil(job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "checkpoint"; });
  const v1::Job running = Get(job.id());
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << "finished too early for the test";
  ASSERT_EQ(running.devices_size(), 2);
  const std::string victim = running.replica();
  ASSERT_TRUE(victim == "r1" || victim == "r2") << victim;
  const std::string survivor = victim == "r1" ? "r2" : "r1";
  std::vector<long> first_pids;
  {
    std::ifstream pids(dir_ + "/data/jobs/" + job.id() + "/worker.pid");
    for (long pid = 0; pids >> pid;) first_pids.push_back(pid);
  }
  ASSERT_EQ(first_pids.size(), 2u);

  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_[survivor].socket, grpc::InsecureChannelCredentials()));
  replicas_[victim].process->Terminate(120);  // SIGTERM; SIGKILL only after 120 s
  replicas_[victim].process->WaitForExit();
  EXPECT_FALSE(replicas_[victim].exit.signaled) << AllLogs();
  EXPECT_EQ(replicas_[victim].exit.exit_status, 0) << AllLogs();
  EXPECT_EQ(Count(ReadFile(replicas_[victim].log), "slimd: stopped (shutdown took"), 1) << AllLogs();
  for (long pid : first_pids) EXPECT_FALSE(ProcessRuns(pid)) << "rank pid " << pid << " outlived its replica";

  const std::vector<v1::JobEvent> history = WatchUntil(
      job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; }, 600);
  ASSERT_FALSE(history.empty());
  EXPECT_EQ(history.back().kind(), "succeeded") << history.back().message() << AllLogs();
  bool handed_over = false;
  int started = 0, resumed_ranks = 0;
  for (size_t i = 0; i < history.size(); ++i) {
    const v1::JobEvent& e = history[i];
    EXPECT_EQ(e.sequence(), static_cast<int64_t>(i + 1)) << "events must be contiguous";
    handed_over |= e.kind() == "requeued" && e.message().find("(server shutdown)") != std::string::npos;
    if (e.kind() == "started") {
      ++started;
      EXPECT_NE(e.message().find("rank 1: worker pid"), std::string::npos) << e.message();
      if (started == 2) {
        EXPECT_NE(e.message().find("of replica " + survivor), std::string::npos) << e.message();
      }
    }
    if (started == 2 && e.kind() == "planned" && e.message().find("resumed from step") != std::string::npos) ++resumed_ranks;
  }
  EXPECT_TRUE(handed_over) << AllLogs();
  EXPECT_EQ(started, 2);
  EXPECT_EQ(resumed_ranks, 2) << "both ranks resume from the checkpoint";
  const v1::Job done = Get(job.id());
  EXPECT_EQ(done.replica(), survivor);
  EXPECT_EQ(done.attempts(), 2);
  EXPECT_EQ(done.crash_retries(), 0) << "a graceful stop is not a crash";
  EXPECT_EQ(done.progress().step(), 250);
  EXPECT_EQ(database.Query("SELECT COUNT(*) FROM jobs WHERE owner IS NOT NULL"), "0");
}

// Admission in a fleet counts every live replica's devices: a replica with one device accepts a
// two-worker job, which a replica with two devices runs.
TEST_F(SlimdE2eTest, PostgresFleetAdmitsAJobOnlyAnotherReplicaCanRun) {
  const absl::StatusOr<std::string> server = pgtest::PostgresServerUrl();
  ASSERT_TRUE(server.ok()) << server.status();
  if (server->empty()) GTEST_SKIP() << "no PostgreSQL server: set SLIM_TEST_POSTGRES_URL or run through ctest";
  const pgtest::TestDatabase database(*server);
  StartReplica("small", database.url(), "3", "cpu:16MiB");
  ASSERT_FALSE(HasFatalFailure());
  StartReplica("large", database.url(), "3", "cpu:16MiB,cpu:16MiB");
  ASSERT_FALSE(HasFatalFailure());
  stub_ = v1::Slim::NewStub(grpc::CreateChannel(replicas_["small"].socket, grpc::InsecureChannelCredentials()));
  const std::string dataset = Upload(std::string(150000, 'f') + "one replica admits, another runs.\n");
  v1::JobSpec spec = Spec(dataset, "8MiB", 30);
  spec.mutable_data_parallel()->set_workers(2);
  const v1::Job job = Create(spec, 0);
  ASSERT_FALSE(job.id().empty());
  const std::vector<v1::JobEvent> history = WatchUntil(
      job.id(), 0, [](const v1::JobEvent& e) { return e.kind() == "succeeded" || e.kind() == "failed"; }, 600);
  ASSERT_FALSE(history.empty());
  EXPECT_EQ(history.back().kind(), "succeeded") << history.back().message() << AllLogs();
  EXPECT_EQ(Get(job.id()).replica(), "large");
  // More workers than any replica has devices: refused, naming the count.
  spec.mutable_training()->set_batch_size(4);
  spec.mutable_data_parallel()->set_workers(3);
  v1::CreateJobRequest request;
  *request.mutable_spec() = spec;
  v1::CreateJobResponse response;
  const grpc::Status refused = stub_->CreateJob(Context(120).get(), request, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("3 workers need as many cpu devices; the replica with the most has 2"),
            std::string::npos)
      << refused.error_message();
}

// An unusable --database-url stops slimd at startup with exit status 1 and the reason.
TEST_F(SlimdE2eTest, UnusableDatabaseUrlStopsStartupWithTheReason) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"host=127.0.0.1 bogus=1",
       "slimd: INVALID_ARGUMENT: --database-url: postgres: malformed connection string: invalid connection option "
       "\"bogus\""},
      {"host=" + dir_ + "/no-such-dir dbname=slim",
       "slimd: UNAVAILABLE: --database-url: postgres: opening the database: cannot connect: connection to server on "
       "socket \"" + dir_ + "/no-such-dir/.s.PGSQL.5432\" failed: No such file or directory"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    WorkerOptions o;
    o.argv = {SLIMD_BINARY, "--listen", socket_, "--data-dir", dir_ + "/data", "--devices", "cpu:16MiB",
              "--metrics-address", "off", "--worker-footprint", "0", "--database-url", cases[i].first};
    o.log_path = dir_ + "/bad-url-" + std::to_string(i) + ".log";
    WorkerExit exit;
    o.on_exit = [&exit](const WorkerExit& e) { exit = e; };
    absl::StatusOr<std::unique_ptr<WorkerProcess>> p = WorkerProcess::Start(std::move(o));
    ASSERT_TRUE(p.ok()) << p.status();
    (*p)->WaitForExit();
    std::ifstream in(dir_ + "/bad-url-" + std::to_string(i) + ".log");
    const std::string log((std::istreambuf_iterator<char>(in)), {});
    EXPECT_FALSE(exit.signaled) << cases[i].first;
    EXPECT_EQ(exit.exit_status, 1) << cases[i].first << "\n" << log;
    EXPECT_NE(log.find(cases[i].second), std::string::npos) << log;
    EXPECT_EQ(log.find("listening on"), std::string::npos) << log;
  }
}

}  // namespace
}  // namespace slim::server
