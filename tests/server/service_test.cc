// The gRPC service end to end inside one process: a real JobManager with a SQLite store and
// real slim-train workers, served on 127.0.0.1:0, called through the generated stub with a
// deadline on every call. Covers each method's success and error paths, WatchJob ordering and
// resume, pagination, cancellation, datasets, models and generation.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <atomic>
#include <thread>
#include <vector>

#include "server/api/executor.h"
#include "server/api/slim_service.h"
#include "server/auth/token_authenticator.h"
#include "base/model_config.h"
#include "base/sha256.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/sqlite_store.h"
#include "slim/v1/slim.grpc.pb.h"

namespace slim::server {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kMiB = 1 << 20;

std::string SampleText(size_t bytes) {
  static const char* kWords[] = {"the", "memory", "of", "a", "performer", "is", "linear", "in", "chunk", "size"};
  std::string text;
  for (size_t i = 0; text.size() < bytes; ++i) text += std::string(kWords[(i * 7 + i / 3) % 10]) + (i % 11 ? " " : ".\n");
  return text;
}

// The SQLite store with a switch that makes every write to a job fail, as a full disk would:
// for the tests of what slimd does when it cannot record.
class FaultyStore : public Store {
 public:
  explicit FaultyStore(std::unique_ptr<Store> store) : store_(std::move(store)) {}
  std::atomic<bool> fail_job_writes{false};

  absl::StatusOr<std::string> NewId(const std::string& prefix) override { return store_->NewId(prefix); }
  absl::StatusOr<v1::Job> CreateJob(v1::Job job, v1::JobEvent first_event) override {
    if (fail_job_writes) return Full();
    return store_->CreateJob(std::move(job), std::move(first_event));
  }
  absl::StatusOr<v1::Job> JobByRequest(const std::string& tenant, const std::string& request_id) override {
    return store_->JobByRequest(tenant, request_id);
  }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override { return store_->GetJob(id); }
  absl::StatusOr<v1::Job> UpdateJob(v1::Job job, v1::JobEvent event) override {
    if (fail_job_writes) return Full();
    return store_->UpdateJob(std::move(job), std::move(event));
  }
  absl::Status SaveJob(const v1::Job& job) override { return fail_job_writes ? Full() : store_->SaveJob(job); }
  using Store::ListJobs;
  absl::StatusOr<Page<v1::Job>> ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                         const std::string& page_token, const ListScope& scope) override {
    return store_->ListJobs(states, page_size, page_token, scope);
  }
  absl::StatusOr<std::vector<v1::Job>> JobsInStates(const std::vector<v1::JobState>& states) override {
    return store_->JobsInStates(states);
  }
  absl::StatusOr<std::map<v1::JobState, int64_t>> CountJobsByState() override { return store_->CountJobsByState(); }
  absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id, int64_t after_sequence,
                                                       int limit) override {
    return store_->ListEvents(job_id, after_sequence, limit);
  }
  absl::Status PutDataset(const v1::Dataset& dataset) override { return store_->PutDataset(dataset); }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override { return store_->GetDataset(id); }
  using Store::ListDatasets;
  absl::StatusOr<Page<v1::Dataset>> ListDatasets(int page_size, const std::string& page_token,
                                                 const ListScope& scope) override {
    return store_->ListDatasets(page_size, page_token, scope);
  }
  absl::Status DeleteDataset(const std::string& id) override { return store_->DeleteDataset(id); }
  absl::Status DeleteJob(const std::string& id) override { return store_->DeleteJob(id); }
  absl::Status PutModel(const v1::Model& model) override { return store_->PutModel(model); }
  absl::Status DeleteModel(const std::string& id) override { return store_->DeleteModel(id); }
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override { return store_->GetModel(id); }
  using Store::ListModels;
  absl::StatusOr<Page<v1::Model>> ListModels(int page_size, const std::string& page_token,
                                             const ListScope& scope) override {
    return store_->ListModels(page_size, page_token, scope);
  }

 private:
  static absl::Status Full() { return absl::ResourceExhaustedError("sqlite: database or disk is full (ENOSPC)"); }
  std::unique_ptr<Store> store_;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/service_test." + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    store_ = std::make_unique<FaultyStore>(*SqliteStore::Open(dir_ + "/slimd.db"));
    JobManagerOptions o;
    o.data_dir = dir_;
    o.worker_binary = SLIM_TRAIN_BINARY;
    o.devices = {{"cpu:0", "cpu", 64 * kMiB}, {"cpu:1", "cpu", 64 * kMiB}};
    o.checkpoint_every = 5;
    o.cancel_grace_seconds = 20;
    o.calibration_cache_dir = dir_ + "/calibration";
    o.scheduler_interval_seconds = 0.2;
    Configure(&o);
    manager_ = std::make_unique<JobManager>(*store_, o);
    ASSERT_TRUE(manager_->Start().ok());
    executor_ = std::make_unique<Executor>(2);
    auth_ = MakeAuthenticator();
    service_ = std::make_unique<SlimService>(*manager_, *executor_, *auth_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    stub_ = v1::Slim::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    manager_->Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    executor_->Shutdown();
    server_.reset();
    manager_.reset();
    fs::remove_all(dir_);
  }

  // A context with a deadline: no call in these tests may hang.
  static std::unique_ptr<grpc::ClientContext> Context(int seconds = 60) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return context;
  }

  grpc::Status Upload(const std::string& name, const std::string& data, v1::Dataset* out,
                      const std::string& digest_override = "", int64_t size_override = -1,
                      const std::string& token = "") {
    Sha256 sha;
    sha.Update(data.data(), data.size());
    auto context = Context();
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    v1::UploadDatasetResponse response;
    auto writer = stub_->UploadDataset(context.get(), &response);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name(name);
    header.mutable_header()->set_size_bytes(size_override >= 0 ? size_override : static_cast<int64_t>(data.size()));
    header.mutable_header()->set_sha256(digest_override.empty() ? sha.HexDigest() : digest_override);
    writer->Write(header);
    for (size_t i = 0; i < data.size(); i += 1000) {
      v1::UploadDatasetRequest chunk;
      chunk.set_chunk(data.substr(i, 1000));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    if (out != nullptr) *out = response.dataset();
    return status;
  }

  std::string UploadedDataset() {
    v1::Dataset dataset;
    EXPECT_TRUE(Upload("sample", SampleText(20000), &dataset).ok());
    return dataset.id();
  }

  static v1::JobSpec TinySpec(const std::string& dataset, int steps, const std::string& quota = "8MiB") {
    v1::JobSpec spec;
    spec.mutable_model()->set_preset("tiny");
    spec.mutable_data()->add_train()->set_dataset(dataset);
    spec.mutable_training()->set_seq_len(128);
    spec.mutable_training()->set_batch_size(2);
    spec.mutable_training()->set_steps(steps);
    spec.mutable_training()->mutable_optimizer()->set_lr(3e-3);
    spec.mutable_memory()->set_quota(quota);
    return spec;
  }

  // What ListDevices showed, polled every 20 ms while `during` ran.
  struct DevicesSeen {
    int64_t most_committed = 0;  // on one device
    std::string reservation;     // the last non-job reservation listed
  };
  DevicesSeen WatchDevicesDuring(const std::function<void()>& during) {
    std::atomic<bool> done{false};
    DevicesSeen seen;
    std::thread poller([&] {
      while (!done.load()) {
        v1::ListDevicesResponse devices;
        if (stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &devices).ok()) {
          for (const v1::Device& d : devices.devices()) {
            seen.most_committed = std::max(seen.most_committed, d.committed_bytes());
            if (d.reservations_size() > 0) seen.reservation = d.reservations(0);
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    during();
    done = true;
    poller.join();
    return seen;
  }

  void ExpectNothingCommitted() {
    v1::ListDevicesResponse after;
    ASSERT_TRUE(stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &after).ok());
    for (const v1::Device& d : after.devices()) {
      EXPECT_EQ(d.committed_bytes(), 0) << d.name();
      EXPECT_EQ(d.reservations_size(), 0) << d.name();
    }
  }

  grpc::Status Create(const v1::JobSpec& spec, v1::Job* job, int priority = 0) {
    v1::CreateJobRequest request;
    *request.mutable_spec() = spec;
    request.set_priority(priority);
    v1::CreateJobResponse response;
    const grpc::Status status = stub_->CreateJob(Context().get(), request, &response);
    if (job != nullptr) *job = response.job();
    return status;
  }

  // Every message of WatchJob from `after`, until the stream ends.
  std::vector<v1::WatchJobResponse> Watch(const std::string& id, int64_t after, grpc::Status* status = nullptr) {
    auto context = Context(180);
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(after);
    auto reader = stub_->WatchJob(context.get(), request);
    std::vector<v1::WatchJobResponse> out;
    v1::WatchJobResponse item;
    while (reader->Read(&item)) out.push_back(item);
    const grpc::Status s = reader->Finish();
    if (status != nullptr) *status = s;
    return out;
  }

  // Everyone is admitted, as on a tokenless loopback server; AuthTest overrides this.
  virtual std::unique_ptr<TokenAuthenticator> MakeAuthenticator() { return TokenAuthenticator::AllowAll(); }
  virtual void Configure(JobManagerOptions*) {}

  // Follows the job until an event of `kind` arrives (or the stream ends).
  // The whole text a Generate streams, and its status.
  std::string Generate(const v1::GenerateRequest& request, grpc::Status* status, int deadline_seconds = 60) {
    auto context = Context(deadline_seconds);
    auto stream = stub_->Generate(context.get(), request);
    std::string text;
    v1::GenerateResponse piece;
    while (stream->Read(&piece)) text += piece.text();
    *status = stream->Finish();
    return text;
  }

  grpc::Status Cancel(const std::string& id) {
    v1::CancelJobRequest request;
    request.set_id(id);
    v1::CancelJobResponse response;
    return stub_->CancelJob(Context().get(), request, &response);
  }

  void WaitForEvent(const std::string& id, const std::string& kind) {
    auto context = Context(300);
    v1::WatchJobRequest request;
    request.set_id(id);
    auto reader = stub_->WatchJob(context.get(), request);
    v1::WatchJobResponse item;
    while (reader->Read(&item)) {
      if (item.has_event() && item.event().kind() == kind) break;
    }
    context->TryCancel();
    reader->Finish();
  }

  std::string dir_;
  std::unique_ptr<TokenAuthenticator> auth_;
  std::unique_ptr<FaultyStore> store_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<SlimService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Slim::Stub> stub_;
};

TEST_F(ServiceTest, JobRunsToCompletionAndWatchStreamsEveryEventInOrder) {
  const std::string dataset = UploadedDataset();
  v1::PlanJobRequest plan_request;
  *plan_request.mutable_spec() = TinySpec(dataset, 12);
  v1::PlanJobResponse plan;
  ASSERT_TRUE(stub_->PlanJob(Context().get(), plan_request, &plan).ok());
  EXPECT_TRUE(plan.feasible());
  EXPECT_GT(plan.chunk_size(), 0);

  v1::Job job;
  const grpc::Status created = Create(TinySpec(dataset, 12), &job);
  ASSERT_TRUE(created.ok()) << created.error_message();
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.chunk_size(), plan.chunk_size());
  EXPECT_EQ(job.quota_bytes(), 8 * kMiB);

  grpc::Status status;
  const std::vector<v1::WatchJobResponse> items = Watch(job.id(), 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(items.size(), 4u);
  EXPECT_TRUE(items[0].has_snapshot());
  std::vector<std::string> kinds;
  for (size_t i = 1; i < items.size(); ++i) {
    ASSERT_TRUE(items[i].has_event());
    EXPECT_EQ(items[i].event().sequence(), static_cast<int64_t>(i)) << "events must be contiguous";
    kinds.push_back(items[i].event().kind());
  }
  EXPECT_EQ(kinds.front(), "queued");
  EXPECT_EQ(kinds.back(), "succeeded");
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "started"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "planned"), kinds.end());
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "progress"), kinds.end());

  v1::GetJobRequest get;
  get.set_id(job.id());
  v1::GetJobResponse done;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &done).ok());
  EXPECT_EQ(done.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.job().progress().step(), 12);
  EXPECT_GT(done.job().observed_peak_bytes(), 0);
  EXPECT_LE(done.job().observed_peak_bytes(), done.job().quota_bytes());
  EXPECT_EQ(done.job().chunk_size(), plan.chunk_size());
  EXPECT_FALSE(done.job().output_model().empty());
  v1::GetModelRequest model_request;
  model_request.set_id(done.job().output_model());
  v1::GetModelResponse model;
  ASSERT_TRUE(stub_->GetModel(Context().get(), model_request, &model).ok());
  EXPECT_EQ(model.model().source_job(), job.id());
  // Read from the output file by `slim-train inspect`: the tiny preset's config and size.
  EXPECT_EQ(model.model().parameters(), PresetConfig("tiny").ParameterCount());
  EXPECT_NE(model.model().config_json().find("\"d_model\""), std::string::npos) << model.model().config_json();

  // Resuming from a cursor gives the snapshot, then exactly the events after it.
  const std::vector<v1::WatchJobResponse> tail = Watch(job.id(), 3);
  ASSERT_EQ(tail.size(), items.size() - 3);
  EXPECT_TRUE(tail[0].has_snapshot());
  EXPECT_EQ(tail[1].event().sequence(), 4);
  EXPECT_EQ(tail.back().event().kind(), "succeeded");
  // A cursor at the end of a finished job: the snapshot alone.
  EXPECT_EQ(Watch(job.id(), done.job().last_sequence()).size(), 1u);

  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  v1::CancelJobResponse cancelled;
  EXPECT_EQ(stub_->CancelJob(Context().get(), cancel, &cancelled).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// Admission plans with the worker's own planner (`slim-train plan --spec`, a subprocess: slimd
// links no LibTorch) from the calibration directory slimd hands both on their command lines —
// no environment variable is shared. The worker's plan (its "planned" event) equals admission's
// in chunk size, mode and predicted peak. A repeated plan is answered from slimd's cache without
// starting a process.
TEST_F(ServiceTest, AdmissionPlansExactlyAsTheWorkerDoes) {
  ::unsetenv("SLIM_CACHE_DIR");
  v1::JobSpec spec = TinySpec(UploadedDataset(), 4, "3MiB");
  spec.mutable_training()->set_seq_len(512);
  v1::PlanJobRequest plan_request;
  *plan_request.mutable_spec() = spec;
  v1::PlanJobResponse plan;
  const int64_t processes_before = manager_->plan_processes();
  ASSERT_TRUE(stub_->PlanJob(Context(300).get(), plan_request, &plan).ok());
  ASSERT_TRUE(plan.feasible());
  ASSERT_LT(plan.chunk_size(), 512) << "a plan that slices, so that chunk size and mode mean something";
  // A new shape: one process answers that it needs a calibration, a second calibrates inside
  // the reservation and plans.
  EXPECT_EQ(manager_->plan_processes(), processes_before + 2);

  v1::Job job;
  ASSERT_TRUE(Create(spec, &job).ok());  // the same spec: planned from the cache
  EXPECT_EQ(manager_->plan_processes(), processes_before + 2);
  EXPECT_EQ(job.chunk_size(), plan.chunk_size());
  EXPECT_EQ(job.mode(), plan.mode());
  EXPECT_EQ(job.predicted_peak_bytes(), plan.predicted_peak_bytes());

  const std::vector<v1::WatchJobResponse> items = Watch(job.id(), 0);
  int planned = 0;
  for (const v1::WatchJobResponse& item : items) {
    if (!item.has_event() || item.event().kind() != "planned") continue;
    ++planned;
    EXPECT_EQ(item.event().chunk_size(), plan.chunk_size());
    EXPECT_EQ(item.event().predicted_peak_bytes(), plan.predicted_peak_bytes());
    EXPECT_NE(item.event().message().find("(" + plan.mode() + ")"), std::string::npos) << item.event().message();
  }
  EXPECT_EQ(planned, 1);
  ASSERT_FALSE(items.empty());
  EXPECT_EQ(items.back().event().kind(), "succeeded");
}

// CreateJob with a request_id (AIP-155): a retry returns the first call's job, never a second;
// the same id for a different job is refused, naming what differs and the job it created.
TEST_F(ServiceTest, CreateWithARequestIdIsIdempotent) {
  const std::string dataset = UploadedDataset();
  v1::CreateJobRequest request;
  *request.mutable_spec() = TinySpec(dataset, 3);
  request.set_display_name("first");
  request.set_request_id("retry-me-1");
  v1::CreateJobResponse first, second;
  ASSERT_TRUE(stub_->CreateJob(Context().get(), request, &first).ok());
  EXPECT_EQ(first.job().request_id(), "retry-me-1");
  ASSERT_TRUE(stub_->CreateJob(Context().get(), request, &second).ok());
  EXPECT_EQ(second.job().id(), first.job().id());
  for (const std::string differs : {"spec", "display_name", "priority"}) {
    v1::CreateJobRequest other = request;
    if (differs == "spec") other.mutable_spec()->mutable_training()->set_steps(4);
    if (differs == "display_name") other.set_display_name("second");
    if (differs == "priority") other.set_priority(5);
    v1::CreateJobResponse refused;
    const grpc::Status status = stub_->CreateJob(Context().get(), other, &refused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS) << differs;
    EXPECT_NE(status.error_message().find("already created " + first.job().id() + " with a different " + differs),
              std::string::npos)
        << status.error_message();
  }
  v1::ListJobsResponse listed;
  ASSERT_TRUE(stub_->ListJobs(Context().get(), v1::ListJobsRequest(), &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 1);

  request.set_request_id("retry-me-2");  // another request: another job
  v1::CreateJobResponse third;
  ASSERT_TRUE(stub_->CreateJob(Context().get(), request, &third).ok());
  EXPECT_NE(third.job().id(), first.job().id());

  request.set_request_id("has space");
  const grpc::Status bad = stub_->CreateJob(Context().get(), request, &third);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.error_message().find("request_id:"), std::string::npos) << bad.error_message();
}

TEST_F(ServiceTest, InvalidRequestsNameTheField) {
  const std::string dataset = UploadedDataset();
  v1::Job job;
  v1::JobSpec no_seq_len = TinySpec(dataset, 5);
  no_seq_len.mutable_training()->clear_seq_len();
  grpc::Status s = Create(no_seq_len, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("training.seq_len"), std::string::npos) << s.error_message();

  v1::JobSpec bad_lr = TinySpec(dataset, 5);
  bad_lr.mutable_training()->mutable_optimizer()->set_lr(-1);
  s = Create(bad_lr, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("training.optimizer.lr"), std::string::npos) << s.error_message();

  // Through protobuf's JSON mapping: a NaN arrives as the string "NaN", a huge int32 as itself;
  // both are refused by the engine's reader with the field named (docs/job-spec.md, "Limits").
  v1::JobSpec nan_lr = TinySpec(dataset, 5);
  nan_lr.mutable_training()->mutable_optimizer()->set_lr(std::nan(""));
  s = Create(nan_lr, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("spec: training.optimizer.lr: must be a number, got 'NaN'"), std::string::npos)
      << s.error_message();
  v1::JobSpec huge_batch = TinySpec(dataset, 5);
  huge_batch.mutable_training()->set_batch_size(2147483647);
  s = Create(huge_batch, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("spec: training.batch_size: must be <= 65536"), std::string::npos)
      << s.error_message();
  v1::JobSpec fixed_chunk = TinySpec(dataset, 5, "1MiB");
  fixed_chunk.mutable_memory()->set_chunk_size(128);
  s = Create(fixed_chunk, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("cannot fit this job at memory.chunk_size 128; the minimum is"), std::string::npos)
      << s.error_message();

  // Names are printable text: no terminal escapes, NULs or newlines (docs/service.md, "Names").
  v1::CreateJobRequest escaped;
  *escaped.mutable_spec() = TinySpec(dataset, 5);
  escaped.set_display_name("job \x1b[31mred");
  v1::CreateJobResponse escaped_response;
  s = stub_->CreateJob(Context().get(), escaped, &escaped_response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("display_name: control character at byte 4"), std::string::npos) << s.error_message();
  v1::Dataset named;
  s = Upload(std::string("two\nlines"), SampleText(100), &named);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("header.name: control character at byte 3"), std::string::npos) << s.error_message();
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  import.set_name(std::string("nul\0name", 8));
  v1::ImportModelResponse imported;
  s = stub_->ImportModel(Context().get(), import, &imported);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("name: control character at byte 3"), std::string::npos) << s.error_message();

  s = Create(TinySpec("ds-999999", 5), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("data.train[0].dataset"), std::string::npos) << s.error_message();

  s = Create(TinySpec(dataset, 5, "64KiB"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("the minimum is"), std::string::npos) << s.error_message();

  s = Create(TinySpec(dataset, 5, "1GiB"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("largest cpu device"), std::string::npos) << s.error_message();

  v1::GetJobRequest get;
  get.set_id("job-424242");
  v1::GetJobResponse got;
  EXPECT_EQ(stub_->GetJob(Context().get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status watch_status;
  EXPECT_TRUE(Watch("job-424242", 0, &watch_status).empty());
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::NOT_FOUND);

  v1::ListJobsRequest list;
  list.set_page_size(-1);
  v1::ListJobsResponse listed;
  s = stub_->ListJobs(Context().get(), list, &listed);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("page_size"), std::string::npos);
  list.set_page_size(10);
  list.set_page_token("not-a-token");
  EXPECT_EQ(stub_->ListJobs(Context().get(), list, &listed).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ListJobsPagesNewestFirstAndFiltersByState) {
  const std::string dataset = UploadedDataset();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    v1::Job job;
    // Priority below zero and a quota too large for two at once keeps most of them queued.
    ASSERT_TRUE(Create(TinySpec(dataset, 3, "40MiB"), &job, -1).ok());
    ids.push_back(job.id());
  }
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListJobsRequest request;
    request.set_page_size(2);
    request.set_page_token(token);
    v1::ListJobsResponse response;
    ASSERT_TRUE(stub_->ListJobs(Context().get(), request, &response).ok());
    for (const v1::Job& j : response.jobs()) seen.push_back(j.id());
    token = response.next_page_token();
    ++pages;
  } while (!token.empty());
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, std::vector<std::string>(ids.rbegin(), ids.rend()));

  for (const std::string& id : ids) Watch(id, 0);  // all finish
  v1::ListJobsRequest succeeded;
  succeeded.add_states(v1::JOB_STATE_SUCCEEDED);
  v1::ListJobsResponse response;
  ASSERT_TRUE(stub_->ListJobs(Context().get(), succeeded, &response).ok());
  EXPECT_EQ(response.jobs_size(), 5);
  v1::ListJobsRequest queued;
  queued.add_states(v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(stub_->ListJobs(Context().get(), queued, &response).ok());
  EXPECT_EQ(response.jobs_size(), 0);
}

TEST_F(ServiceTest, CancellingARunningJobCheckpointsAndEndsItsWatch) {
  const std::string dataset = UploadedDataset();
  v1::Job job;
  ASSERT_TRUE(Create(TinySpec(dataset, 100000), &job).ok());
  WaitForEvent(job.id(), "progress");  // then cancel from another call
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLING);
  const std::vector<v1::WatchJobResponse> items = Watch(job.id(), cancelled.job().last_sequence());
  ASSERT_GE(items.size(), 2u);
  EXPECT_EQ(items.back().event().kind(), "cancelled");
  EXPECT_EQ(items.back().event().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(fs::is_empty(dir_ + "/jobs/" + job.id() + "/checkpoints"));
}

TEST_F(ServiceTest, DatasetsAreVerifiedListedAndProtectedWhileInUse) {
  v1::Dataset dataset;
  grpc::Status s = Upload("bad-digest", SampleText(3000), &dataset, std::string(64, '0'));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("header.sha256"), std::string::npos) << s.error_message();
  s = Upload("short", SampleText(3000), &dataset, "", 5000);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("header.size_bytes"), std::string::npos) << s.error_message();
  s = Upload("long", SampleText(3000), &dataset, "", 100);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  const std::string text = SampleText(3000);
  ASSERT_TRUE(Upload("good", text, &dataset).ok());
  EXPECT_EQ(dataset.size_bytes(), static_cast<int64_t>(text.size()));
  EXPECT_EQ(dataset.format(), "text");
  v1::GetDatasetRequest get;
  get.set_id(dataset.id());
  v1::GetDatasetResponse got;
  ASSERT_TRUE(stub_->GetDataset(Context().get(), get, &got).ok());
  EXPECT_EQ(got.dataset().sha256(), dataset.sha256());
  v1::ListDatasetsResponse listed;
  ASSERT_TRUE(stub_->ListDatasets(Context().get(), v1::ListDatasetsRequest(), &listed).ok());
  EXPECT_EQ(listed.datasets_size(), 1);  // failed uploads left nothing behind

  v1::Job job;
  ASSERT_TRUE(Create(TinySpec(dataset.id(), 100000), &job).ok());
  v1::DeleteDatasetRequest del;
  del.set_id(dataset.id());
  v1::DeleteDatasetResponse deleted;
  s = stub_->DeleteDataset(Context().get(), del, &deleted);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(job.id()), std::string::npos);
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &cancelled).ok());
  Watch(job.id(), 0);
  // The cancelled job used it: deleting it now needs force.
  EXPECT_EQ(stub_->DeleteDataset(Context().get(), del, &deleted).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  del.set_force(true);
  ASSERT_TRUE(stub_->DeleteDataset(Context().get(), del, &deleted).ok());
  EXPECT_EQ(stub_->GetDataset(Context().get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stub_->DeleteDataset(Context().get(), del, &deleted).error_code(), grpc::StatusCode::NOT_FOUND);
}

// GetJobLogs (issue 20, item 2): the worker's log whole, its last lines, and followed from a
// running job's start to its end; tenant errors as GetJob's.
TEST_F(ServiceTest, LogsAreStreamedWholeTailedAndFollowedToTheJobsEnd) {
  const auto read_logs = [&](const std::string& id, bool follow, int64_t tail, grpc::Status* status) {
    v1::GetJobLogsRequest request;
    request.set_id(id);
    request.set_follow(follow);
    request.set_tail_lines(tail);
    auto context = Context(180);
    auto reader = stub_->GetJobLogs(context.get(), request);
    std::string text;
    v1::GetJobLogsResponse item;
    while (reader->Read(&item)) {
      EXPECT_EQ(item.rank(), 0);
      EXPECT_FALSE(item.data().empty());
      EXPECT_EQ(item.data().back(), '\n') << "a message ends mid-line";
      text += item.data();
    }
    *status = reader->Finish();
    return text;
  };
  v1::Job job;
  ASSERT_TRUE(Create(TinySpec(UploadedDataset(), 15), &job).ok());
  grpc::Status status;
  const std::string followed = read_logs(job.id(), true, 0, &status);  // from before it starts
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::GetJobRequest get;
  get.set_id(job.id());
  v1::GetJobResponse got;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().state(), v1::JOB_STATE_SUCCEEDED) << "follow ended before the job did";
  EXPECT_NE(followed.find("training on cpu"), std::string::npos) << followed;
  EXPECT_NE(followed.find("step 15/15"), std::string::npos) << followed;
  EXPECT_NE(followed.find("done: "), std::string::npos) << "the last lines were lost: " << followed;

  const std::string whole = read_logs(job.id(), false, 0, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(whole, followed);
  const std::string tail = read_logs(job.id(), false, 2, &status);
  ASSERT_TRUE(status.ok());
  const size_t cut = whole.rfind('\n', whole.rfind('\n', whole.size() - 2) - 1);
  EXPECT_EQ(tail, whole.substr(cut + 1));
  EXPECT_EQ(std::count(tail.begin(), tail.end(), '\n'), 2);
  EXPECT_EQ(read_logs(job.id(), false, 100000, &status), whole);

  read_logs("job-999999", false, 0, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  read_logs(job.id(), false, -1, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Cleanup (issue 20, item 3): ended jobs are deleted with their files, models only while no
// active job fine-tunes them, imports are deduplicated by content, and a dataset ended jobs
// used is deleted only with force.
TEST_F(ServiceTest, CleanupDeletesEndedJobsUnusedModelsAndDatasetsWithForce) {
  v1::Dataset dataset;
  ASSERT_TRUE(Upload("sample", SampleText(20000), &dataset).ok());
  v1::Job first;
  ASSERT_TRUE(Create(TinySpec(dataset.id(), 100000), &first).ok());
  WaitForEvent(first.id(), "checkpoint");
  v1::DeleteJobRequest delete_job;
  delete_job.set_id(first.id());
  v1::DeleteJobResponse job_deleted;
  grpc::Status s = stub_->DeleteJob(Context().get(), delete_job, &job_deleted);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("RUNNING"), std::string::npos) << s.error_message();
  ASSERT_TRUE(Cancel(first.id()).ok());
  Watch(first.id(), 0);
  const fs::path first_dir = fs::path(dir_) / "jobs" / first.id();
  ASSERT_TRUE(fs::exists(first_dir / "checkpoints"));
  ASSERT_TRUE(stub_->DeleteJob(Context().get(), delete_job, &job_deleted).ok());
  EXPECT_FALSE(fs::exists(first_dir));
  v1::GetJobRequest get;
  get.set_id(first.id());
  v1::GetJobResponse got;
  EXPECT_EQ(stub_->GetJob(Context().get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Watch(first.id(), 0).size(), 0u);
  EXPECT_EQ(stub_->DeleteJob(Context().get(), delete_job, &job_deleted).error_code(), grpc::StatusCode::NOT_FOUND);

  // A finished job's output model: kept when the job is deleted, protected while fine-tuned.
  v1::Job trained;
  ASSERT_TRUE(Create(TinySpec(dataset.id(), 6), &trained).ok());
  Watch(trained.id(), 0);
  get.set_id(trained.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  const std::string output = got.job().output_model();
  ASSERT_FALSE(output.empty());
  v1::JobSpec tune = TinySpec(dataset.id(), 100000);
  tune.mutable_model()->Clear();
  tune.mutable_model()->set_base(output);
  v1::Job tuning;
  ASSERT_TRUE(Create(tune, &tuning).ok());
  v1::DeleteModelRequest delete_model;
  delete_model.set_id(output);
  v1::DeleteModelResponse model_deleted;
  s = stub_->DeleteModel(Context().get(), delete_model, &model_deleted);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find(tuning.id()), std::string::npos) << s.error_message();
  ASSERT_TRUE(Cancel(tuning.id()).ok());
  Watch(tuning.id(), 0);

  // The same bytes imported twice: one shared model.
  v1::ImportModelRequest import;
  import.set_path(manager_->catalog().ModelFilePath(output));
  v1::ImportModelResponse imported, again;
  ASSERT_TRUE(stub_->ImportModel(Context().get(), import, &imported).ok());
  EXPECT_FALSE(imported.existing());
  EXPECT_EQ(imported.model().sha256().size(), 64u);
  import.set_name("another name");
  ASSERT_TRUE(stub_->ImportModel(Context().get(), import, &again).ok());
  EXPECT_TRUE(again.existing());
  EXPECT_EQ(again.model().id(), imported.model().id());

  ASSERT_TRUE(stub_->DeleteModel(Context().get(), delete_model, &model_deleted).ok());
  EXPECT_FALSE(fs::exists(manager_->catalog().ModelFilePath(output)));
  v1::GetModelRequest get_model;
  get_model.set_id(output);
  v1::GetModelResponse model;
  EXPECT_EQ(stub_->GetModel(Context().get(), get_model, &model).error_code(), grpc::StatusCode::NOT_FOUND);
  get_model.set_id(imported.model().id());
  EXPECT_TRUE(stub_->GetModel(Context().get(), get_model, &model).ok()) << "the import is a copy of its own";

  // The dataset: ended jobs used it, so deleting it needs force, and says which jobs.
  v1::DeleteDatasetRequest delete_dataset;
  delete_dataset.set_id(dataset.id());
  v1::DeleteDatasetResponse dataset_deleted;
  s = stub_->DeleteDataset(Context().get(), delete_dataset, &dataset_deleted);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("used by 2 ended jobs"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find(trained.id()), std::string::npos) << s.error_message();
  delete_dataset.set_force(true);
  ASSERT_TRUE(stub_->DeleteDataset(Context().get(), delete_dataset, &dataset_deleted).ok());
  EXPECT_FALSE(fs::exists(manager_->catalog().DatasetPath(dataset.id())));
}

// PlanJob as a dry run (issue 20, item 4): local files by digest, nothing uploaded, and an
// immediate answer saying when a calibration is needed.
TEST_F(ServiceTest, PlansTakeLocalFilesByDigestAndSayWhenTheyMustCalibrate) {
  const std::string text = SampleText(20000);
  Sha256 sha;
  sha.Update(text.data(), text.size());
  v1::JobSpec spec = TinySpec("", 10);
  spec.mutable_data()->clear_train();
  v1::LocalFile* file = spec.mutable_data()->add_train()->mutable_file();
  file->set_name("corpus.txt");
  file->set_size_bytes(static_cast<int64_t>(text.size()));
  file->set_sha256(sha.HexDigest());
  v1::PlanJobRequest request;
  *request.mutable_spec() = spec;
  request.set_only_if_calibrated(true);
  v1::PlanJobResponse plan;
  ASSERT_TRUE(stub_->PlanJob(Context().get(), request, &plan).ok());
  EXPECT_TRUE(plan.calibration_needed());
  EXPECT_EQ(plan.device_kind(), "cpu");
  EXPECT_EQ(plan.chunk_size(), 0);
  request.set_only_if_calibrated(false);
  ASSERT_TRUE(stub_->PlanJob(Context().get(), request, &plan).ok());
  EXPECT_FALSE(plan.calibration_needed());
  EXPECT_TRUE(plan.feasible());
  EXPECT_GT(plan.chunk_size(), 0);
  EXPECT_GE(plan.full_backprop_peak_bytes(), plan.predicted_peak_bytes());
  v1::ListDatasetsResponse listed;
  ASSERT_TRUE(stub_->ListDatasets(Context().get(), v1::ListDatasetsRequest(), &listed).ok());
  EXPECT_EQ(listed.datasets_size(), 0) << "a plan uploaded nothing";
  request.set_only_if_calibrated(true);
  ASSERT_TRUE(stub_->PlanJob(Context().get(), request, &plan).ok());
  EXPECT_FALSE(plan.calibration_needed()) << "calibrated now";
  EXPECT_GT(plan.chunk_size(), 0);

  // The same bytes uploaded: the dataset stands in for the file, and is checked as one.
  v1::Dataset dataset;
  ASSERT_TRUE(Upload("corpus", text, &dataset).ok());
  v1::PlanJobResponse with_dataset;
  ASSERT_TRUE(stub_->PlanJob(Context().get(), request, &with_dataset).ok());
  EXPECT_EQ(with_dataset.chunk_size(), plan.chunk_size());

  v1::Job job;
  grpc::Status s = Create(spec, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("spec: data.train[0].file: only PlanJob takes a file"), std::string::npos)
      << s.error_message();
  file->set_sha256("not-a-digest");
  *request.mutable_spec() = spec;
  s = stub_->PlanJob(Context().get(), request, &plan);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("data.train[0].file.sha256"), std::string::npos) << s.error_message();
}

TEST_F(ServiceTest, ModelsImportExportAndGenerate) {
  const std::string base = std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors";
  v1::ImportModelRequest import;
  import.set_path(base);
  import.set_name("base-mini");
  v1::ImportModelResponse imported;
  ASSERT_TRUE(stub_->ImportModel(Context().get(), import, &imported).ok());
  EXPECT_EQ(imported.model().name(), "base-mini");
  EXPECT_GT(imported.model().parameters(), 800000);
  import.set_path("relative/path.safetensors");
  EXPECT_EQ(stub_->ImportModel(Context().get(), import, &imported).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  import.set_path(base + ".missing");
  EXPECT_EQ(stub_->ImportModel(Context().get(), import, &imported).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(Context().get(), v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  const std::string id = models.models(0).id();

  v1::ExportModelRequest export_request;
  export_request.set_id(id);
  auto context = Context();
  auto reader = stub_->ExportModel(context.get(), export_request);
  std::string bytes;
  v1::ExportModelResponse chunk;
  int64_t total = -1;
  while (reader->Read(&chunk)) {
    if (total < 0) total = chunk.total_bytes();
    bytes += chunk.chunk();
  }
  ASSERT_TRUE(reader->Finish().ok());
  std::ifstream in(base, std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(bytes, original);
  EXPECT_EQ(total, static_cast<int64_t>(original.size()));

  const auto generate = [&](int64_t seed, grpc::Status* status) {
    v1::GenerateRequest request;
    request.set_model(id);
    request.set_prompt("This License ");
    request.set_max_tokens(40);
    request.set_temperature(0.8);
    request.set_seed(seed);
    return Generate(request, status);
  };
  grpc::Status s1, s2;
  const std::string a = generate(7, &s1), b = generate(7, &s2);
  ASSERT_TRUE(s1.ok()) << s1.error_message();
  EXPECT_EQ(a.size(), 40u);
  EXPECT_EQ(a, b);

  v1::GenerateRequest bad;
  bad.set_model(id);
  bad.set_prompt("x");
  bad.set_max_tokens(100000);
  auto ctx = Context();
  auto stream = stub_->Generate(ctx.get(), bad);
  v1::GenerateResponse piece;
  while (stream->Read(&piece)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A Generate's sampling process runs inside a reservation the scheduler counts like a job: it
// shows in ListDevices (committed memory and a "generate-N" entry) while it runs and is gone
// after. When every device's memory is committed to jobs, Generate is refused with
// RESOURCE_EXHAUSTED saying so (docs/service.md, "Generation"), and works again once a job ends.
TEST_F(ServiceTest, GenerateIsCountedOnItsDeviceAndRefusedWhenEveryDeviceIsFull) {
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  v1::ImportModelResponse imported;
  ASSERT_TRUE(stub_->ImportModel(Context().get(), import, &imported).ok());
  const auto generate = [&](grpc::Status* status, int max_tokens) {
    v1::GenerateRequest request;
    request.set_model(imported.model().id());
    request.set_prompt("The planner ");
    request.set_max_tokens(max_tokens);
    request.set_seed(1);
    return Generate(request, status);
  };

  // Watch ListDevices while a long generation runs.
  grpc::Status status;
  std::string text;
  const DevicesSeen seen = WatchDevicesDuring([&] { text = generate(&status, 2000); });
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(text.size(), 2000u);
  EXPECT_EQ(seen.reservation.rfind("generate-", 0), 0u) << seen.reservation;
  const int64_t model_bytes = imported.model().size_bytes();
  EXPECT_EQ(seen.most_committed, 2 * model_bytes + 16 * kMiB) << "the default generation quota";
  ExpectNothingCommitted();

  // Both devices full: each runs a job with the whole 64 MiB.
  const std::string dataset = UploadedDataset();
  v1::Job first, second;
  ASSERT_TRUE(Create(TinySpec(dataset, 100000, "64MiB"), &first).ok());
  ASSERT_TRUE(Create(TinySpec(dataset, 100000, "64MiB"), &second).ok());
  WaitForEvent(first.id(), "started");
  WaitForEvent(second.id(), "started");
  generate(&status, 10);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("generate: needs"), std::string::npos) << status.error_message();
  EXPECT_NE(status.error_message().find("committed to jobs"), std::string::npos) << status.error_message();

  ASSERT_TRUE(Cancel(first.id()).ok());
  Watch(first.id(), 0);  // until it has ended
  // ... and its worker has exited, which returns its quota.
  for (int i = 0; i < 600; ++i) {
    v1::ListDevicesResponse devices;
    ASSERT_TRUE(stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &devices).ok());
    if (std::any_of(devices.devices().begin(), devices.devices().end(),
                    [](const v1::Device& d) { return d.committed_bytes() == 0; })) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string after_cancel = generate(&status, 10);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(after_cancel.size(), 10u);
  EXPECT_TRUE(Cancel(second.id()).ok());
}

// A plan that calibrates a new shape does so inside a reservation counted on its device
// (docs/service.md, "Calibration"); when every device is committed to jobs, it is refused with
// the reason, while shapes already calibrated still plan.
TEST_F(ServiceTest, CalibrationIsCountedOnItsDeviceAndRefusedWhenEveryDeviceIsFull) {
  const std::string dataset = UploadedDataset();
  v1::PlanJobRequest request;
  *request.mutable_spec() = TinySpec(dataset, 5);
  request.mutable_spec()->mutable_training()->set_batch_size(4);  // a longer calibration to watch
  v1::PlanJobResponse plan;
  grpc::Status status;
  const DevicesSeen seen = WatchDevicesDuring([&] { status = stub_->PlanJob(Context(300).get(), request, &plan); });
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(plan.feasible());
  EXPECT_EQ(seen.reservation.rfind("calibrate-", 0), 0u) << seen.reservation;
  // CalibrationPeakBound for tiny at batch 4 (PlannerOnCpu.CalibrationStaysInsideItsBound
  // measures the calibration inside it): about 45 MiB, less than a device.
  EXPECT_GT(seen.most_committed, 16 * kMiB);
  EXPECT_LT(seen.most_committed, 64 * kMiB);
  ExpectNothingCommitted();

  // Both devices full: each runs a job with the whole 64 MiB (batch 2, another shape).
  v1::Job first, second;
  ASSERT_TRUE(Create(TinySpec(dataset, 100000, "64MiB"), &first).ok());
  ASSERT_TRUE(Create(TinySpec(dataset, 100000, "64MiB"), &second).ok());
  WaitForEvent(first.id(), "started");
  WaitForEvent(second.id(), "started");
  v1::PlanJobRequest new_shape = request;
  new_shape.mutable_spec()->mutable_training()->set_batch_size(3);
  status = stub_->PlanJob(Context(300).get(), new_shape, &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("has not been calibrated on cpu yet; calibrate: needs"), std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("committed to jobs"), std::string::npos) << status.error_message();
  status = stub_->PlanJob(Context(300).get(), request, &plan);  // batch 4: calibrated above
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(Cancel(first.id()).ok());
  EXPECT_TRUE(Cancel(second.id()).ok());
}

// A Generate whose client gives up is stopped at once, also while the sampler is still reading
// a long prompt and has no token to send: its process is killed and its reservation returned
// (issue 18). The prompt takes this machine tens of seconds to read (about 12 s per 300 KB).
TEST_F(ServiceTest, AbandonedGenerateStopsItsSampler) {
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  v1::ImportModelResponse imported;
  ASSERT_TRUE(stub_->ImportModel(Context().get(), import, &imported).ok());
  v1::GenerateRequest request;
  request.set_model(imported.model().id());
  request.set_prompt(SampleText(600000));
  request.set_max_tokens(5);
  grpc::Status status;
  Generate(request, &status, /*deadline_seconds=*/3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  const auto gave_up = std::chrono::steady_clock::now();
  bool released = false;
  while (!released && std::chrono::steady_clock::now() - gave_up < std::chrono::seconds(5)) {
    v1::ListDevicesResponse devices;
    ASSERT_TRUE(stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &devices).ok());
    released = std::all_of(devices.devices().begin(), devices.devices().end(),
                           [](const v1::Device& d) { return d.reservations_size() == 0; });
    if (!released) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(released) << "the sampler still holds its reservation 5 s after its client gave up";
}

// An upload whose client goes away in the middle leaves nothing behind: no dataset, no partial
// file under tmp/ (issue 18).
TEST_F(ServiceTest, AbandonedUploadLeavesNoPartialFile) {
  const std::string data = SampleText(200000);
  Sha256 sha;
  sha.Update(data.data(), data.size());
  {
    auto context = Context();
    v1::UploadDatasetResponse response;
    auto writer = stub_->UploadDataset(context.get(), &response);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name("abandoned");
    header.mutable_header()->set_size_bytes(static_cast<int64_t>(data.size()));
    header.mutable_header()->set_sha256(sha.HexDigest());
    ASSERT_TRUE(writer->Write(header));
    v1::UploadDatasetRequest chunk;
    chunk.set_chunk(data.substr(0, 50000));
    ASSERT_TRUE(writer->Write(chunk));
    // The server has the partial file now.
    bool partial = false;
    for (int i = 0; i < 200 && !partial; ++i) {
      for (const auto& entry : fs::directory_iterator(dir_ + "/tmp")) partial |= entry.path().filename().string().rfind("upload-", 0) == 0;
      if (!partial) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(partial) << "the upload never reached the server";
    context->TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  bool clean = false;
  for (int i = 0; i < 200 && !clean; ++i) {
    clean = fs::is_empty(dir_ + "/tmp");
    if (!clean) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_TRUE(clean) << "a partial upload was left under tmp/";
  v1::ListDatasetsResponse listed;
  ASSERT_TRUE(stub_->ListDatasets(Context().get(), v1::ListDatasetsRequest(), &listed).ok());
  EXPECT_EQ(listed.datasets_size(), 0);
}

TEST_F(ServiceTest, ListDevicesShowsCommittedQuotas) {
  const std::string dataset = UploadedDataset();
  v1::Job job;
  ASSERT_TRUE(Create(TinySpec(dataset, 100000, "10MiB"), &job).ok());
  WaitForEvent(job.id(), "started");
  v1::ListDevicesResponse devices;
  ASSERT_TRUE(stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &devices).ok());
  ASSERT_EQ(devices.devices_size(), 2);
  int64_t committed = 0;
  for (const v1::Device& d : devices.devices()) {
    EXPECT_EQ(d.capacity_bytes(), 64 * kMiB);
    committed += d.committed_bytes();
  }
  EXPECT_EQ(committed, 10 * kMiB);
}

// Fault: SIGKILL one worker. Only its job is affected: it is retried from its last checkpoint
// and completes; its neighbour on the same device keeps running with its first worker.
TEST_F(ServiceTest, KilledWorkerIsRetriedFromItsCheckpointAndNeighboursContinue) {
  const std::string dataset = UploadedDataset();
  v1::Job victim, neighbour;
  // Long enough that the kill lands mid-run even when the checkpoint event arrives late (a
  // loaded CI machine once delivered it after the 60 steps the victim had were done).
  ASSERT_TRUE(Create(TinySpec(dataset, 300, "8MiB"), &victim).ok());
  ASSERT_TRUE(Create(TinySpec(dataset, 60, "8MiB"), &neighbour).ok());
  WaitForEvent(victim.id(), "checkpoint");  // checkpoints every 5 steps here
  WaitForEvent(neighbour.id(), "progress");
  std::ifstream pid_file(dir_ + "/jobs/" + victim.id() + "/worker.pid");
  long pid = 0;
  ASSERT_TRUE(pid_file >> pid);
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGKILL), 0);

  std::vector<std::string> kinds;
  for (const v1::WatchJobResponse& item : Watch(victim.id(), 0)) {
    if (item.has_event()) kinds.push_back(item.event().kind());
  }
  EXPECT_NE(std::find(kinds.begin(), kinds.end(), "retrying"), kinds.end());
  EXPECT_EQ(kinds.back(), "succeeded");
  Watch(neighbour.id(), 0);
  v1::GetJobRequest get;
  v1::GetJobResponse got;
  get.set_id(victim.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().crash_retries(), 1);
  EXPECT_EQ(got.job().attempts(), 2);
  get.set_id(neighbour.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(got.job().attempts(), 1) << "the neighbour must not have been restarted";
}

// Reconciliation (issue 18): a worker ends while the store cannot be written (a full disk), so
// its end is not recorded and the job stays RUNNING without a worker. slimd says so (store_error,
// NOT_SERVING on health in slimd) and, once writes succeed again, settles the job: requeued with
// the reason, then it runs to the end.
TEST_F(ServiceTest, JobWhoseEndCouldNotBeRecordedIsRequeuedWhenTheStoreRecovers) {
  const std::string dataset = UploadedDataset();
  v1::Job job;
  ASSERT_TRUE(Create(TinySpec(dataset, 300, "8MiB"), &job).ok());
  WaitForEvent(job.id(), "checkpoint");
  std::ifstream pid_file(dir_ + "/jobs/" + job.id() + "/worker.pid");
  long pid = 0;
  ASSERT_TRUE(pid_file >> pid);
  EXPECT_EQ(manager_->store_error(), "");
  store_->fail_job_writes = true;
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGKILL), 0);
  for (int i = 0; i < 600 && manager_->store_error().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_NE(manager_->store_error().find("disk is full (ENOSPC)"), std::string::npos) << manager_->store_error();
  std::this_thread::sleep_for(std::chrono::seconds(1));  // passes run meanwhile and cannot settle it
  v1::GetJobRequest get;
  get.set_id(job.id());
  v1::GetJobResponse got;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().state(), v1::JOB_STATE_RUNNING) << "the store still has the state before the failure";

  store_->fail_job_writes = false;
  std::vector<std::string> messages;
  std::string last_kind;
  for (const v1::WatchJobResponse& item : Watch(job.id(), 0)) {
    if (!item.has_event()) continue;
    last_kind = item.event().kind();
    if (last_kind == "requeued") messages.push_back(item.event().message());
  }
  ASSERT_FALSE(messages.empty());
  EXPECT_NE(messages.back().find("its end could not be recorded"), std::string::npos) << messages.back();
  EXPECT_EQ(last_kind, "succeeded");
  EXPECT_EQ(manager_->store_error(), "");
}

// The pids in <job dir>/worker.pid, one per rank.
std::vector<pid_t> WorkerPids(const std::string& job_dir) {
  std::ifstream in(job_dir + "/worker.pid");
  std::vector<pid_t> pids;
  for (long pid = 0; in >> pid;) pids.push_back(static_cast<pid_t>(pid));
  return pids;
}

// A data-parallel job runs as two ranks on both devices at once, and trains like one worker
// with the same global batch (the engine's own tests check the weights; here the losses).
TEST_F(ServiceTest, DataParallelJobRunsOnTwoDevicesAndTrainsLikeOneWorker) {
  const std::string dataset = UploadedDataset();
  v1::Job single, parallel;
  ASSERT_TRUE(Create(TinySpec(dataset, 40), &single).ok());
  v1::JobSpec parallel_spec = TinySpec(dataset, 40);
  parallel_spec.mutable_data_parallel()->set_workers(2);
  const grpc::Status created = Create(parallel_spec, &parallel);
  ASSERT_TRUE(created.ok()) << created.error_message();
  EXPECT_EQ(parallel.quota_bytes(), 8 * kMiB) << "the quota is per worker";

  // While it runs, both devices carry it.
  WaitForEvent(parallel.id(), "progress");
  v1::ListDevicesResponse devices;
  ASSERT_TRUE(stub_->ListDevices(Context().get(), v1::ListDevicesRequest(), &devices).ok());
  ASSERT_EQ(devices.devices_size(), 2);
  for (const v1::Device& d : devices.devices()) {
    EXPECT_NE(std::find(d.job_ids().begin(), d.job_ids().end(), parallel.id()), d.job_ids().end()) << d.name();
  }
  EXPECT_EQ(WorkerPids(dir_ + "/jobs/" + parallel.id()).size(), 2u);

  std::vector<std::string> planned;
  for (const v1::WatchJobResponse& item : Watch(parallel.id(), 0)) {
    if (item.has_event() && item.event().kind() == "planned") planned.push_back(item.event().message());
  }
  ASSERT_EQ(planned.size(), 2u) << "one plan per rank";
  std::sort(planned.begin(), planned.end());
  EXPECT_EQ(planned[0].rfind("rank 0 on cpu:", 0), 0u) << planned[0];
  EXPECT_EQ(planned[1].rfind("rank 1 on cpu:", 0), 0u) << planned[1];
  Watch(single.id(), 0);

  v1::GetJobRequest get;
  v1::GetJobResponse one, two;
  get.set_id(single.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &one).ok());
  get.set_id(parallel.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &two).ok());
  ASSERT_EQ(one.job().state(), v1::JOB_STATE_SUCCEEDED) << one.job().error();
  ASSERT_EQ(two.job().state(), v1::JOB_STATE_SUCCEEDED) << two.job().error();
  ASSERT_EQ(two.job().devices_size(), 2);
  EXPECT_NE(two.job().devices(0), two.job().devices(1));
  EXPECT_EQ(two.job().device(), two.job().devices(0));
  EXPECT_EQ(two.job().attempts(), 1);
  EXPECT_EQ(two.job().progress().step(), 40);
  EXPECT_EQ(two.job().progress().tokens(), one.job().progress().tokens()) << "the same global batch";
  EXPECT_NEAR(two.job().progress().loss(), one.job().progress().loss(), 1e-5 * one.job().progress().loss());
  EXPECT_NEAR(two.job().progress().eval_loss(), one.job().progress().eval_loss(), 1e-4 * one.job().progress().eval_loss());
  EXPECT_FALSE(two.job().output_model().empty());
  EXPECT_EQ(one.job().devices_size(), 1);

  // Its log is every rank's.
  v1::GetJobLogsRequest logs;
  logs.set_id(parallel.id());
  auto context = Context();
  auto reader = stub_->GetJobLogs(context.get(), logs);
  std::map<int, std::string> by_rank;
  v1::GetJobLogsResponse item;
  while (reader->Read(&item)) by_rank[item.rank()] += item.data();
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(by_rank.size(), 2u);
  EXPECT_NE(by_rank[0].find("rank 0 of 2"), std::string::npos) << by_rank[0];
  EXPECT_NE(by_rank[1].find("rank 1 of 2"), std::string::npos) << by_rank[1];

  // More workers than devices, or than sequences per batch: refused, naming the field.
  v1::JobSpec three = TinySpec(dataset, 5);
  three.mutable_training()->set_batch_size(4);
  three.mutable_data_parallel()->set_workers(3);
  grpc::Status s = Create(three, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("data_parallel.workers: 3 workers need as many cpu devices; this server has 2"),
            std::string::npos)
      << s.error_message();
  three.mutable_training()->set_batch_size(2);
  s = Create(three, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("data_parallel.workers"), std::string::npos) << s.error_message();
}

// A rank killed mid-training ends its group; the job is retried as a whole from its checkpoint
// and succeeds. A cancelled group stops every rank.
TEST_F(ServiceTest, DataParallelGroupIsRetriedAsAWholeAndCancelledAsAWhole) {
  const std::string dataset = UploadedDataset();
  v1::JobSpec spec = TinySpec(dataset, 60);
  spec.mutable_data_parallel()->set_workers(2);
  v1::Job victim;
  ASSERT_TRUE(Create(spec, &victim).ok());
  WaitForEvent(victim.id(), "checkpoint");  // every 5 steps here
  const std::vector<pid_t> pids = WorkerPids(dir_ + "/jobs/" + victim.id());
  ASSERT_EQ(pids.size(), 2u);
  ASSERT_EQ(::kill(pids[1], SIGKILL), 0);

  std::vector<v1::JobEvent> events;
  for (const v1::WatchJobResponse& item : Watch(victim.id(), 0)) {
    if (item.has_event()) events.push_back(item.event());
  }
  ASSERT_FALSE(events.empty());
  const auto retrying = std::find_if(events.begin(), events.end(), [](const v1::JobEvent& e) { return e.kind() == "retrying"; });
  ASSERT_NE(retrying, events.end());
  EXPECT_EQ(retrying->message().rfind("rank 1 of 2 (cpu:", 0), 0u) << "the killed rank is named: " << retrying->message();
  EXPECT_NE(retrying->message().find("killed by signal 9"), std::string::npos) << retrying->message();
  EXPECT_EQ(events.back().kind(), "succeeded");
  v1::GetJobRequest get;
  v1::GetJobResponse got;
  get.set_id(victim.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().attempts(), 2);
  EXPECT_EQ(got.job().crash_retries(), 1);
  EXPECT_EQ(got.job().progress().step(), 60);
  for (const pid_t pid : pids) EXPECT_NE(::kill(pid, 0), 0) << "pid " << pid << " of the first attempt still runs";

  v1::Job cancelled;
  spec.mutable_training()->set_steps(100000);
  ASSERT_TRUE(Create(spec, &cancelled).ok());
  WaitForEvent(cancelled.id(), "progress");
  const std::vector<pid_t> running = WorkerPids(dir_ + "/jobs/" + cancelled.id());
  ASSERT_EQ(running.size(), 2u);
  v1::CancelJobRequest cancel;
  cancel.set_id(cancelled.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &response).ok());
  std::vector<v1::WatchJobResponse> items = Watch(cancelled.id(), 0);
  ASSERT_FALSE(items.empty());
  EXPECT_EQ(items.back().event().kind(), "cancelled") << items.back().event().message();
  // The job's record comes from rank 0's checkpoint; the group is gone by the next pass.
  for (int i = 0; i < 100 && manager_->ListDevices().devices(0).job_ids_size() +
                                     manager_->ListDevices().devices(1).job_ids_size() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (const pid_t pid : running) EXPECT_NE(::kill(pid, 0), 0) << "rank pid " << pid << " outlived its cancelled job";
}

// slimd SIGKILLs the ranks it stops 50 ms after SIGTERM here, so the survivors of a killed rank
// usually die by slimd's signal before they notice the loss themselves.
class QuickKillTest : public ServiceTest {
 protected:
  void Configure(JobManagerOptions* o) override { o->cancel_grace_seconds = 0.05; }
};

// The rank that was killed from outside is named, not the ranks slimd stopped after it (which
// also died by a signal).
TEST_F(QuickKillTest, DataParallelRetryBlamesTheKilledRankNotTheOnesSlimdStopped) {
  const std::string dataset = UploadedDataset();
  v1::JobSpec spec = TinySpec(dataset, 40);
  spec.mutable_data_parallel()->set_workers(2);
  v1::Job job;
  ASSERT_TRUE(Create(spec, &job).ok());
  WaitForEvent(job.id(), "progress");
  const std::vector<pid_t> pids = WorkerPids(dir_ + "/jobs/" + job.id());
  ASSERT_EQ(pids.size(), 2u);
  ASSERT_EQ(::kill(pids[1], SIGKILL), 0);
  std::vector<v1::JobEvent> events;
  for (const v1::WatchJobResponse& item : Watch(job.id(), 0)) {
    if (item.has_event()) events.push_back(item.event());
  }
  const auto retry = std::find_if(events.begin(), events.end(), [](const v1::JobEvent& e) { return e.kind() == "retrying"; });
  ASSERT_NE(retry, events.end());
  EXPECT_EQ(retry->message().rfind("rank 1 of 2 (cpu:", 0), 0u) << retry->message();
  EXPECT_NE(retry->message().find("killed by signal 9"), std::string::npos) << retry->message();
  EXPECT_EQ(events.back().kind(), "succeeded") << events.back().message();
}

// One device, so that a failing job and its neighbour share it.
class RetentionTest : public ServiceTest {
 protected:
  void Configure(JobManagerOptions* o) override { o->checkpoint_retention_seconds = 1; }
};

// --checkpoint-retention: an ended job's checkpoints go after the period; its record, log and
// output model stay, and a running job's checkpoints are never touched.
TEST_F(RetentionTest, CheckpointsOfEndedJobsAreDeletedAfterTheRetentionPeriod) {
  const std::string dataset = UploadedDataset();
  v1::Job ended, running;
  ASSERT_TRUE(Create(TinySpec(dataset, 12), &ended).ok());
  Watch(ended.id(), 0);
  ASSERT_TRUE(Create(TinySpec(dataset, 100000), &running).ok());
  WaitForEvent(running.id(), "checkpoint");
  const fs::path ended_dir = fs::path(dir_) / "jobs" / ended.id();
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = !fs::exists(ended_dir / "checkpoints");
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(gone) << "checkpoints of a job ended more than 1 s ago";
  EXPECT_TRUE(fs::exists(ended_dir / "worker.log"));
  EXPECT_TRUE(fs::exists(fs::path(dir_) / "jobs" / running.id() / "checkpoints")) << "a running job's checkpoints";
  v1::GetJobRequest get;
  get.set_id(ended.id());
  v1::GetJobResponse got;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_TRUE(fs::exists(manager_->catalog().ModelFilePath(got.job().output_model())));
  ASSERT_TRUE(Cancel(running.id()).ok());
  Watch(running.id(), 0);
}

class OneDeviceTest : public ServiceTest {
 protected:
  void Configure(JobManagerOptions* o) override { o->devices = {{"cpu:0", "cpu", 64 * kMiB}}; }
};

// A job whose memory model is wrong (here: a calibration made to under-count activations 50×,
// as a stale or foreign cache would) is admitted with a chunk size that does not fit; the
// worker's hard cap stops it at its quota. It fails alone, as RESOURCE_EXHAUSTED, and its
// neighbour on the same device finishes without a restart.
TEST_F(OneDeviceTest, JobExceedingItsQuotaFailsAloneAsResourceExhausted) {
  const std::string dataset = UploadedDataset();
  v1::JobSpec victim_spec = TinySpec(dataset, 20, "3MiB");
  victim_spec.mutable_training()->set_seq_len(512);
  v1::PlanJobRequest plan_request;
  *plan_request.mutable_spec() = victim_spec;
  v1::PlanJobResponse honest;
  ASSERT_TRUE(stub_->PlanJob(Context(300).get(), plan_request, &honest).ok());
  ASSERT_TRUE(honest.feasible());
  ASSERT_LT(honest.chunk_size(), 512) << "the honest plan must need slicing for this test to mean anything";

  // The only calibration so far is the victim's shape: scale its memory terms down.
  std::vector<fs::path> cached;
  for (const auto& entry : fs::directory_iterator(dir_ + "/calibration")) cached.push_back(entry.path());
  ASSERT_EQ(cached.size(), 1u);
  std::string key;
  double k[6];
  {
    std::ifstream in(cached[0]);
    ASSERT_TRUE(std::getline(in, key));
    for (double& v : k) ASSERT_TRUE(in >> v);
  }
  {
    std::ofstream out(cached[0]);
    out.precision(17);
    out << key << "\n" << k[0] / 50 << " " << k[1] / 50 << " " << k[2] << " " << k[3] << " " << k[4] << " " << k[5] << "\n";
  }
  v1::PlanJobResponse wrong;
  ASSERT_TRUE(stub_->PlanJob(Context().get(), plan_request, &wrong).ok());
  ASSERT_GT(wrong.chunk_size(), honest.chunk_size());

  v1::Job neighbour, victim;
  v1::JobSpec neighbour_spec = TinySpec(dataset, 40, "8MiB");
  neighbour_spec.mutable_training()->set_batch_size(1);  // another shape: its own, honest calibration
  ASSERT_TRUE(Create(neighbour_spec, &neighbour).ok());
  WaitForEvent(neighbour.id(), "progress");
  ASSERT_TRUE(Create(victim_spec, &victim).ok());
  EXPECT_EQ(victim.chunk_size(), wrong.chunk_size());

  std::vector<v1::WatchJobResponse> events = Watch(victim.id(), 0);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().event().kind(), "failed");
  v1::GetJobRequest get;
  v1::GetJobResponse got;
  get.set_id(victim.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(got.job().error_code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED)) << got.job().error();
  EXPECT_NE(got.job().error().find("memory cap exceeded"), std::string::npos) << got.job().error();
  EXPECT_EQ(got.job().device(), "cpu:0");
  EXPECT_EQ(got.job().attempts(), 1) << "an over-quota job is not retried: it would fail the same way";

  Watch(neighbour.id(), 0);
  get.set_id(neighbour.id());
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &got).ok());
  EXPECT_EQ(got.job().state(), v1::JOB_STATE_SUCCEEDED) << got.job().error();
  EXPECT_EQ(got.job().device(), "cpu:0");
  EXPECT_EQ(got.job().attempts(), 1) << "the neighbour must not have been restarted";
  EXPECT_EQ(got.job().error_code(), 0);
}

// CPU workers share the cores: slimd divides --worker-cpu-threads (here 4) among the live CPU
// workers' BLAS pools, and re-divides when one starts or ends.
class CpuThreadsTest : public ServiceTest {
 protected:
  void Configure(JobManagerOptions* o) override { o->worker_cpu_threads = 4; }

  // Polls GetJob until the job reports `threads` BLAS threads; the count it reported last.
  int WaitForThreads(const std::string& id, int threads) {
    v1::GetJobRequest get;
    get.set_id(id);
    v1::GetJobResponse got;
    for (int i = 0; i < 600; ++i) {
      if (!stub_->GetJob(Context().get(), get, &got).ok()) break;
      if (got.job().progress().blas_threads() == threads) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return got.job().progress().blas_threads();
  }
};

TEST_F(CpuThreadsTest, CpuWorkersShareTheCoresAsJobsStartAndEnd) {
  const std::string dataset = UploadedDataset();
  v1::Job first, second;
  ASSERT_TRUE(Create(TinySpec(dataset, 1000000), &first).ok());
  EXPECT_EQ(WaitForThreads(first.id(), 4), 4) << "alone, a worker gets every core";
  ASSERT_TRUE(Create(TinySpec(dataset, 1000000), &second).ok());
  EXPECT_EQ(WaitForThreads(second.id(), 2), 2);
  EXPECT_EQ(WaitForThreads(first.id(), 2), 2) << "the running worker gives half back";
  v1::CancelJobRequest cancel;
  v1::CancelJobResponse response;
  cancel.set_id(second.id());
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &response).ok());
  Watch(second.id(), 0);
  EXPECT_EQ(WaitForThreads(first.id(), 4), 4) << "the survivor gets the cores back";
  cancel.set_id(first.id());
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &response).ok());
  Watch(first.id(), 0);
}

// A queued job that this server's devices can never take (here a 2-worker job put in the store
// directly, as a server restarted with fewer devices finds it) waits and says why.
TEST_F(OneDeviceTest, JobTheDevicesCanNeverTakeWaitsAndSaysWhy) {
  const std::string dataset = UploadedDataset();
  v1::Job job;
  job.set_id(*store_->NewId("job"));
  job.set_state(v1::JOB_STATE_QUEUED);
  *job.mutable_spec() = TinySpec(dataset, 5);
  job.mutable_spec()->mutable_data_parallel()->set_workers(2);
  job.set_quota_bytes(8 * kMiB);
  v1::JobEvent queued;
  queued.set_kind("queued");
  ASSERT_TRUE(store_->CreateJob(job, queued).ok());
  WaitForEvent(job.id(), "warning");
  std::vector<std::string> warnings;
  v1::CancelJobRequest cancel;
  cancel.set_id(job.id());
  v1::CancelJobResponse response;
  ASSERT_TRUE(stub_->CancelJob(Context().get(), cancel, &response).ok());
  for (const v1::WatchJobResponse& item : Watch(job.id(), 0)) {
    if (item.has_event() && item.event().kind() == "warning") warnings.push_back(item.event().message());
  }
  ASSERT_EQ(warnings.size(), 1u) << "said once, not at every pass";
  EXPECT_EQ(warnings[0], "cannot be placed on this server's devices: needs 2 cpu devices with 8.0 MiB each; there is 1");
}

// A server with a tokens file: every method needs "authorization: Bearer <known token>".
class AuthTest : public ServiceTest {
 protected:
  static std::string Digest(const std::string& token) {
    Sha256 sha;
    sha.Update(token.data(), token.size());
    return sha.HexDigest();
  }
  std::unique_ptr<TokenAuthenticator> MakeAuthenticator() override {
    const std::string path = dir_ + "/tokens.yaml";
    std::ofstream(path) << "tokens:\n"
                        << "  - {sha256: " << Digest("s3cret-alice") << ", tenant: alice, role: user}\n"
                        << "  - {sha256: " << Digest("s3cret-bob") << ", tenant: bob, role: user}\n"
                        << "  - {sha256: " << Digest("s3cret-ops") << ", tenant: ops, role: admin}\n";
    absl::StatusOr<std::unique_ptr<TokenAuthenticator>> auth = TokenAuthenticator::FromFile(path);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return *std::move(auth);
  }
  static std::unique_ptr<grpc::ClientContext> WithToken(const std::string& token) {
    auto context = Context();
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    return context;
  }
  grpc::Status UploadAs(const std::string& token, const std::string& text, v1::Dataset* dataset) {
    return Upload("data", text, dataset, "", -1, token);
  }
};

TEST_F(AuthTest, EveryMethodNeedsAValidBearerToken) {
  v1::GetJobRequest get;
  get.set_id("job-000001");
  v1::GetJobResponse got;
  EXPECT_EQ(stub_->GetJob(WithToken("").get(), get, &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stub_->GetJob(WithToken("s3cret-alicE").get(), get, &got).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A valid token gets through to the method (which then finds no such job).
  EXPECT_EQ(stub_->GetJob(WithToken("s3cret-alice").get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);

  v1::CreateJobRequest create;
  v1::CreateJobResponse created;
  EXPECT_EQ(stub_->CreateJob(WithToken("").get(), create, &created).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto context = WithToken("nope");
  v1::WatchJobRequest watch;
  watch.set_id("job-000001");
  auto reader = stub_->WatchJob(context.get(), watch);
  v1::WatchJobResponse item;
  EXPECT_FALSE(reader->Read(&item));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto upload_context = WithToken("");
  v1::UploadDatasetResponse uploaded;
  auto writer = stub_->UploadDataset(upload_context.get(), &uploaded);
  v1::UploadDatasetRequest header;
  header.mutable_header()->set_name("x");
  writer->Write(header);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  v1::ListDevicesResponse devices;
  EXPECT_TRUE(stub_->ListDevices(WithToken("s3cret-alice").get(), v1::ListDevicesRequest(), &devices).ok());

  // Importing reads server files: a user token is not enough.
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  v1::ImportModelResponse imported;
  EXPECT_EQ(stub_->ImportModel(WithToken("s3cret-alice").get(), import, &imported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

// Tenants see only their own jobs, datasets and models (others' are NOT_FOUND, as if absent);
// admins see everything; models an admin imports are shared.
TEST_F(AuthTest, TenantsSeeOnlyTheirOwnResources) {
  // The admin imports the shared base model.
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  v1::ImportModelResponse base;
  ASSERT_TRUE(stub_->ImportModel(WithToken("s3cret-ops").get(), import, &base).ok());

  // Alice uploads a dataset and runs a job on it.
  v1::Dataset uploaded;
  ASSERT_TRUE(UploadAs("s3cret-alice", SampleText(20000), &uploaded).ok());
  const std::string dataset = uploaded.id();
  EXPECT_EQ(uploaded.tenant(), "alice");

  v1::CreateJobRequest create;
  *create.mutable_spec() = TinySpec(dataset, 5);
  v1::CreateJobResponse created;
  ASSERT_TRUE(stub_->CreateJob(WithToken("s3cret-alice").get(), create, &created).ok());
  const std::string job = created.job().id();
  EXPECT_EQ(created.job().tenant(), "alice");

  // Bob can neither see nor use any of it.
  v1::GetJobRequest get;
  get.set_id(job);
  v1::GetJobResponse got;
  EXPECT_EQ(stub_->GetJob(WithToken("s3cret-bob").get(), get, &got).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::CancelJobRequest cancel;
  cancel.set_id(job);
  v1::CancelJobResponse cancelled;
  EXPECT_EQ(stub_->CancelJob(WithToken("s3cret-bob").get(), cancel, &cancelled).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::GetDatasetRequest get_dataset;
  get_dataset.set_id(dataset);
  v1::GetDatasetResponse got_dataset;
  EXPECT_EQ(stub_->GetDataset(WithToken("s3cret-bob").get(), get_dataset, &got_dataset).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::CreateJobResponse bobs;
  const grpc::Status borrowed = stub_->CreateJob(WithToken("s3cret-bob").get(), create, &bobs);
  EXPECT_EQ(borrowed.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(borrowed.error_message().find("data.train[0].dataset"), std::string::npos) << borrowed.error_message();
  // An admin sees Alice's dataset, but a job of the admin's tenant could not read it when it
  // starts: refused at creation, naming whose it is.
  v1::CreateJobResponse admins;
  const grpc::Status admin_borrowed = stub_->CreateJob(WithToken("s3cret-ops").get(), create, &admins);
  EXPECT_EQ(admin_borrowed.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(admin_borrowed.error_message().find("belongs to tenant 'alice'; a job of tenant 'ops' cannot read it"),
            std::string::npos)
      << admin_borrowed.error_message();
  {
    auto context = WithToken("s3cret-bob");
    v1::WatchJobRequest watch;
    watch.set_id(job);
    auto reader = stub_->WatchJob(context.get(), watch);
    v1::WatchJobResponse item;
    EXPECT_FALSE(reader->Read(&item));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  const auto count_jobs = [&](const std::string& token) {
    v1::ListJobsResponse listed;
    EXPECT_TRUE(stub_->ListJobs(WithToken(token).get(), v1::ListJobsRequest(), &listed).ok());
    return listed.jobs_size();
  };
  EXPECT_EQ(count_jobs("s3cret-bob"), 0);
  EXPECT_EQ(count_jobs("s3cret-alice"), 1);
  EXPECT_EQ(count_jobs("s3cret-ops"), 1);
  v1::ListDatasetsResponse datasets;
  ASSERT_TRUE(stub_->ListDatasets(WithToken("s3cret-bob").get(), v1::ListDatasetsRequest(), &datasets).ok());
  EXPECT_EQ(datasets.datasets_size(), 0);

  // The job's output model is Alice's; the imported base is everyone's.
  {
    auto context = WithToken("s3cret-alice");
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    v1::WatchJobRequest watch;
    watch.set_id(job);
    auto reader = stub_->WatchJob(context.get(), watch);
    v1::WatchJobResponse item;
    while (reader->Read(&item)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  ASSERT_TRUE(stub_->GetJob(WithToken("s3cret-alice").get(), get, &got).ok());
  ASSERT_EQ(got.job().state(), v1::JOB_STATE_SUCCEEDED);
  v1::GetModelRequest get_model;
  get_model.set_id(got.job().output_model());
  v1::GetModelResponse model;
  ASSERT_TRUE(stub_->GetModel(WithToken("s3cret-alice").get(), get_model, &model).ok());
  EXPECT_EQ(model.model().tenant(), "alice");
  EXPECT_EQ(stub_->GetModel(WithToken("s3cret-bob").get(), get_model, &model).error_code(), grpc::StatusCode::NOT_FOUND);
  get_model.set_id(base.model().id());
  EXPECT_TRUE(stub_->GetModel(WithToken("s3cret-bob").get(), get_model, &model).ok());
  v1::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(WithToken("s3cret-bob").get(), v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), base.model().id());
  ASSERT_TRUE(stub_->ListModels(WithToken("s3cret-alice").get(), v1::ListModelsRequest(), &models).ok());
  EXPECT_EQ(models.models_size(), 2);
}

// Per-tenant limits: a tenant at its limit is refused with the limit named; another tenant and
// admins are not affected.
class LimitsTest : public AuthTest {
 protected:
  void Configure(JobManagerOptions* o) override {
    o->tenant_max_jobs = 1;
    o->tenant_max_quota_bytes = 12 * kMiB;
    o->tenant_max_dataset_bytes = 30000;
    o->tenant_max_calls = 1;
  }
};

// --tenant-max-calls: while one of Alice's expensive calls runs (a generation reading a long
// prompt), her next one is refused with the limit named; Bob's is not, and Alice's next call
// after the first has answered is served.
TEST_F(LimitsTest, ExpensiveCallsAreLimitedPerTenant) {
  v1::ImportModelRequest import;
  import.set_path(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  v1::ImportModelResponse base;
  ASSERT_TRUE(stub_->ImportModel(WithToken("s3cret-ops").get(), import, &base).ok());
  v1::Dataset data;
  ASSERT_TRUE(UploadAs("s3cret-alice", SampleText(20000), &data).ok());

  std::atomic<bool> generating{false};
  grpc::Status generated;
  std::thread generation([&] {
    auto context = WithToken("s3cret-alice");
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(6));
    v1::GenerateRequest request;
    request.set_model(base.model().id());
    request.set_prompt(SampleText(600000));  // tens of seconds to read here
    request.set_max_tokens(5);
    auto stream = stub_->Generate(context.get(), request);
    generating = true;
    v1::GenerateResponse piece;
    while (stream->Read(&piece)) {
    }
    generated = stream->Finish();
  });
  while (!generating) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the call has arrived and counts
  v1::PlanJobRequest plan;
  *plan.mutable_spec() = TinySpec(data.id(), 5);
  v1::PlanJobResponse planned;
  const grpc::Status refused = stub_->PlanJob(WithToken("s3cret-alice").get(), plan, &planned);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("the limit is 1 (slimd --tenant-max-calls)"), std::string::npos)
      << refused.error_message();
  v1::Dataset bobs;
  ASSERT_TRUE(UploadAs("s3cret-bob", SampleText(20000), &bobs).ok());
  *plan.mutable_spec() = TinySpec(bobs.id(), 5);
  const grpc::Status bob = stub_->PlanJob(WithToken("s3cret-bob").get(), plan, &planned);
  EXPECT_TRUE(bob.ok()) << bob.error_message();
  generation.join();
  EXPECT_EQ(generated.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << generated.error_message();
  *plan.mutable_spec() = TinySpec(data.id(), 5);
  grpc::Status after;
  for (int i = 0; i < 100; ++i) {  // the slot is returned once the sampler has been stopped
    after = stub_->PlanJob(WithToken("s3cret-alice").get(), plan, &planned);
    if (after.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(after.ok()) << after.error_message();
  // A client calling again as soon as it has its answer is never refused for its own previous
  // call: the slot is returned before the answer is sent (a race this once lost under load).
  for (int i = 0; i < 40; ++i) {
    after = stub_->PlanJob(WithToken("s3cret-alice").get(), plan, &planned);
    ASSERT_TRUE(after.ok()) << "call " << i << ": " << after.error_message();
  }
}

TEST_F(LimitsTest, TenantLimitsAreEnforcedPerTenant) {
  v1::Dataset alice_data, bob_data, extra;
  ASSERT_TRUE(UploadAs("s3cret-alice", SampleText(20000), &alice_data).ok());
  grpc::Status s = UploadAs("s3cret-alice", SampleText(15000), &extra);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--tenant-max-dataset-storage"), std::string::npos) << s.error_message();
  ASSERT_TRUE(UploadAs("s3cret-bob", SampleText(20000), &bob_data).ok());  // bob has his own allowance

  v1::CreateJobRequest create;
  *create.mutable_spec() = TinySpec(alice_data.id(), 100000);
  v1::CreateJobResponse created;
  ASSERT_TRUE(stub_->CreateJob(WithToken("s3cret-alice").get(), create, &created).ok());
  s = stub_->CreateJob(WithToken("s3cret-alice").get(), create, &created);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("the limit is 1 (slimd --tenant-max-jobs)"), std::string::npos) << s.error_message();
  // A data-parallel job commits its per-worker quota on each of its devices: 2 × 8 MiB > 12 MiB.
  *create.mutable_spec() = TinySpec(bob_data.id(), 5);
  create.mutable_spec()->mutable_data_parallel()->set_workers(2);
  s = stub_->CreateJob(WithToken("s3cret-bob").get(), create, &created);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("this job's 16.0 MiB would pass the limit of 12.0 MiB (slimd --tenant-max-quota)"),
            std::string::npos)
      << s.error_message();
  create.mutable_spec()->clear_data_parallel();
  s = stub_->CreateJob(WithToken("s3cret-bob").get(), create, &created);
  EXPECT_TRUE(s.ok()) << s.error_message();
  // Admins are exempt: two jobs at once (on their own tenant's data: a job runs as its tenant).
  v1::Dataset ops_data;
  ASSERT_TRUE(UploadAs("s3cret-ops", SampleText(20000), &ops_data).ok());
  *create.mutable_spec() = TinySpec(ops_data.id(), 5);
  for (int i = 0; i < 2; ++i) {
    s = stub_->CreateJob(WithToken("s3cret-ops").get(), create, &created);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
}

TEST(TokenAuthenticator, FileErrorsNameTheEntry) {
  const std::string dir = ::testing::TempDir();
  const auto load = [&](const std::string& text) {
    const std::string path = dir + "/tokens-" + std::to_string(::getpid()) + ".yaml";
    std::ofstream(path) << text;
    return TokenAuthenticator::FromFile(path).status();
  };
  const std::string digest(64, 'a');
  EXPECT_NE(load("tokens: []\n").message().find("no tokens"), absl::string_view::npos);
  EXPECT_NE(load("tokens:\n  - {sha256: abc, tenant: a}\n").message().find("tokens[0].sha256"), absl::string_view::npos);
  EXPECT_NE(load("tokens:\n  - {sha256: " + digest + ", tenant: 'a b'}\n").message().find("tokens[0].tenant"),
            absl::string_view::npos);
  EXPECT_NE(load("tokens:\n  - {sha256: " + digest + ", tenant: a, role: root}\n").message().find("unknown role 'root'"),
            absl::string_view::npos);
  EXPECT_NE(load("tokens:\n  - {sha256: " + digest + ", tenant: a}\n  - {sha256: " + digest + ", tenant: b}\n")
                .message()
                .find("tokens[1].sha256: listed twice"),
            absl::string_view::npos);
  EXPECT_TRUE(load("tokens:\n  - {sha256: " + digest + ", tenant: a, role: admin}\n").ok());
}

}  // namespace
}  // namespace slim::server
