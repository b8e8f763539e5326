#include "server/api/slim_service.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/api/serial_write_reactor.h"
#include "server/jobs/job_helpers.h"

namespace slim::server {
namespace {

constexpr size_t kExportChunkBytes = 1 << 20;
constexpr int kWatchBatch = 64;

// Runs `fn` (returning absl::Status); an escaping exception becomes INTERNAL.
template <typename Fn>
absl::Status Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::InternalError(std::string("unexpected error: ") + e.what());
  }
}

// The caller's principal from the "authorization" metadata.
absl::StatusOr<Principal> Caller(const TokenAuthenticator& auth, const grpc::CallbackServerContext* context) {
  std::optional<std::string> authorization;
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it != metadata.end()) authorization = std::string(it->second.data(), it->second.size());
  return auth.Authenticate(authorization);
}

template <typename Fn>
grpc::ServerUnaryReactor* Unary(const TokenAuthenticator& auth, grpc::CallbackServerContext* context, Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::StatusOr<Principal> caller = Caller(auth, context);
  reactor->Finish(ToGrpcStatus(caller.ok() ? Guarded([&] { return fn(*caller); }) : caller.status()));
  return reactor;
}

template <typename Fn>
grpc::ServerUnaryReactor* UnaryOnExecutor(const TokenAuthenticator& auth, Executor& executor, Admission& admission,
                                          const char* method, grpc::CallbackServerContext* context, Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::StatusOr<Principal> caller = Caller(auth, context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  // Counted from here, while it waits for the executor too (--tenant-max-calls).
  absl::StatusOr<std::shared_ptr<void>> call = admission.BeginCall(*caller, method);
  if (!call.ok()) {
    reactor->Finish(ToGrpcStatus(call.status()));
    return reactor;
  }
  executor.Submit([reactor, context, fn, principal = *caller, call = *std::move(call)]() mutable {
    // A call whose client gave up while it waited for the executor (its deadline passed, or it
    // disconnected) is not started: nothing is planned, created or imported for nobody.
    grpc::Status status(grpc::StatusCode::CANCELLED, "the client gave up before the request started");
    if (!context->IsCancelled()) status = ToGrpcStatus(Guarded([&] { return fn(principal); }));
    // The tenant's call slot is free before the client can see the answer and call again.
    call.reset();
    reactor->Finish(status);
  });
  return reactor;
}

// WatchJob: the snapshot, then events read from the store after a cursor, one write at a time.
// Events are durable in the store, so a slow client only delays its own stream; training and
// other watchers never wait for it.
class WatchReactor final : public SerialWriteReactor<v1::WatchJobResponse> {
 public:
  WatchReactor(JobManager& manager, const v1::WatchJobRequest& request, const absl::StatusOr<Principal>& caller)
      : manager_(manager) {
    absl::StatusOr<v1::Job> job = !caller.ok()           ? absl::StatusOr<v1::Job>(caller.status())
                                  : request.id().empty() ? absl::InvalidArgumentError("id: is required")
                                                         : manager_.GetJob(request.id(), *caller);
    if (request.after_sequence() < 0) job = absl::InvalidArgumentError("after_sequence: must be >= 0");
    if (!job.ok()) {
      absl::MutexLock lock(&guard()->mu);
      End(ToGrpcStatus(job.status()));
      return;
    }
    // Set up before the guard is locked: notifications come with the manager's locks held and
    // then take the guard's, so registering under the guard's would order them both ways.
    job_id_ = request.id();
    cursor_ = request.after_sequence();
    done_after_snapshot_ = IsTerminal(job->state()) && job->last_sequence() <= cursor_;
    v1::WatchJobResponse snapshot;
    *snapshot.mutable_snapshot() = *std::move(job);
    pending_.push_back(std::move(snapshot));
    std::shared_ptr<StreamGuard> guard = this->guard();
    handle_ = manager_.Watch(job_id_, [guard, this] {
      absl::MutexLock lock(&guard->mu);
      if (guard->alive) Next();
    });
    absl::MutexLock lock(&this->guard()->mu);
    Next();
  }

 private:
  void Next() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard()->mu) {
    if (!CanWrite()) return;
    if (pending_.empty()) {
      absl::StatusOr<std::vector<v1::JobEvent>> events = manager_.Events(job_id_, cursor_, kWatchBatch);
      if (!events.ok()) return End(ToGrpcStatus(events.status()));
      for (v1::JobEvent& e : *events) {
        cursor_ = e.sequence();
        v1::WatchJobResponse item;
        *item.mutable_event() = std::move(e);
        pending_.push_back(std::move(item));
      }
    }
    if (pending_.empty()) {
      // Every event is written; after a shutdown none will follow, so the stream ends here,
      // well before the server's deadline would cancel it. Clients resume from the cursor.
      if (manager_.stopped()) {
        return End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                absl::StrCat("slimd is shutting down; watch again with after_sequence ", cursor_)));
      }
      return;  // a watcher notification brings more
    }
    current_ = std::move(pending_.front());
    pending_.pop_front();
    // The stream ends after the snapshot of an ended job with nothing after the cursor, or
    // after the terminal event.
    const bool last = (current_.has_snapshot() && done_after_snapshot_) ||
                      (current_.has_event() && IsTerminal(current_.event().state()));
    Write(&current_, last);
  }

  void Release() override {
    if (handle_ != 0) manager_.Unwatch(handle_);
  }

  JobManager& manager_;
  std::string job_id_;
  int64_t handle_ = 0;
  int64_t cursor_ ABSL_GUARDED_BY(guard()->mu) = 0;
  bool done_after_snapshot_ = false;
  std::deque<v1::WatchJobResponse> pending_ ABSL_GUARDED_BY(guard()->mu);
  v1::WatchJobResponse current_;
};

// UploadDataset: header, then chunks appended to a temp file; the manager verifies and
// registers it on the executor.
class UploadReactor final : public grpc::ServerReadReactor<v1::UploadDatasetRequest> {
 public:
  UploadReactor(JobManager& manager, Executor& executor, v1::UploadDatasetResponse* response,
                const absl::StatusOr<Principal>& caller)
      : manager_(manager), executor_(executor), response_(response) {
    if (!caller.ok()) {
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    caller_ = *caller;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client finished sending (or went away)
      if (cancelled_.load()) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      if (!has_header_) return Fail(absl::InvalidArgumentError("header: the first message must be the header"));
      errno = 0;
      out_.close();
      if (!out_) return Fail(WriteError(errno));
      if (received_ != header_.size_bytes()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("header.size_bytes: received ", received_,
                                                            " bytes, the header says ", header_.size_bytes())));
      }
      executor_.Submit([this] {
        absl::StatusOr<v1::Dataset> dataset = manager_.catalog().AddDataset(header_, temp_path_, caller_);
        temp_path_.clear();  // consumed by AddDataset either way
        if (dataset.ok()) *response_->mutable_dataset() = *dataset;
        Finish(ToGrpcStatus(dataset.status()));
      });
      return;
    }
    if (request_.has_header()) {
      if (has_header_) return Fail(absl::InvalidArgumentError("header: sent twice"));
      header_ = request_.header();
      if (header_.size_bytes() <= 0 || header_.size_bytes() > manager_.catalog().max_dataset_bytes()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("header.size_bytes: must be in [1, ",
                                                            manager_.catalog().max_dataset_bytes(), "], got ",
                                                            header_.size_bytes())));
      }
      if (header_.sha256().size() != 64) {
        return Fail(absl::InvalidArgumentError("header.sha256: must be 64 hex characters"));
      }
      has_header_ = true;
      temp_path_ = manager_.catalog().TempPath();
      errno = 0;
      out_.open(temp_path_, std::ios::binary | std::ios::trunc);
      if (!out_) return Fail(WriteError(errno));
    } else {
      if (!has_header_) return Fail(absl::InvalidArgumentError("header: the first message must be the header"));
      received_ += static_cast<int64_t>(request_.chunk().size());
      if (received_ > header_.size_bytes()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("chunk: more data than header.size_bytes (",
                                                            header_.size_bytes(), ")")));
      }
      errno = 0;
      out_.write(request_.chunk().data(), static_cast<std::streamsize>(request_.chunk().size()));
      // A failed write (ENOSPC: the disk is full, EFBIG, EIO) ends the upload now, naming the
      // cause, instead of reading the rest of it for nothing.
      if (!out_) return Fail(WriteError(errno));
    }
    StartRead(&request_);
  }

  void OnCancel() override { cancelled_ = true; }

  void OnDone() override {
    if (!temp_path_.empty()) std::remove(temp_path_.c_str());
    delete this;
  }

 private:
  void Fail(const absl::Status& status) {
    out_.close();
    Finish(ToGrpcStatus(status));
  }
  // The cause by its errno name and message, the file by its place in the data directory.
  absl::Status WriteError(int error) const {
    const std::string file = "tmp/" + std::filesystem::path(temp_path_).filename().string();
    const bool full = error == ENOSPC || error == EDQUOT || error == EFBIG;
    const std::string cause = error == ENOSPC   ? "ENOSPC: no space left on device"
                              : error == EDQUOT ? "EDQUOT: disk quota exceeded"
                              : error == EFBIG  ? "EFBIG: the file size limit (RLIMIT_FSIZE) was reached"
                              : error != 0      ? std::strerror(error)
                                                : "the write failed";
    const std::string message = absl::StrCat("cannot write the upload to ", file, " in the data directory: ", cause);
    return full ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
  }

  JobManager& manager_;
  Executor& executor_;
  v1::UploadDatasetResponse* response_;
  Principal caller_;
  v1::UploadDatasetRequest request_;
  v1::UploadDatasetHeader header_;
  bool has_header_ = false;
  int64_t received_ = 0;
  std::string temp_path_;
  std::ofstream out_;
  std::atomic<bool> cancelled_{false};
};

// ExportModel: the file in chunks, the next read after each write completes.
class ExportReactor final : public grpc::ServerWriteReactor<v1::ExportModelResponse> {
 public:
  ExportReactor(JobManager& manager, const v1::ExportModelRequest& request, const absl::StatusOr<Principal>& caller) {
    absl::StatusOr<std::string> path = !caller.ok()           ? absl::StatusOr<std::string>(caller.status())
                                       : request.id().empty() ? absl::InvalidArgumentError("id: is required")
                                                              : manager.catalog().ModelPath(request.id(), *caller);
    if (!path.ok()) {
      Finish(ToGrpcStatus(path.status()));
      return;
    }
    in_.open(*path, std::ios::binary | std::ios::ate);
    if (!in_) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "cannot read the model file"));
      return;
    }
    const int64_t total = static_cast<int64_t>(in_.tellg());
    in_.seekg(0);
    message_.set_total_bytes(total);
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    message_.clear_total_bytes();
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    std::string chunk(kExportChunkBytes, '\0');
    in_.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    chunk.resize(static_cast<size_t>(in_.gcount()));
    if (chunk.empty()) return Finish(grpc::Status::OK);
    message_.set_chunk(std::move(chunk));
    StartWrite(&message_);
  }
  std::ifstream in_;
  v1::ExportModelResponse message_;
};

// Generate: the executor samples; text pieces are coalesced while a write is in flight.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(JobManager& manager, Executor& executor, const v1::GenerateRequest& request,
                  const absl::StatusOr<Principal>& caller)
      : guard_(std::make_shared<StreamGuard>()) {
    if (!caller.ok()) {
      finished_ = true;
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    absl::StatusOr<std::shared_ptr<void>> call = manager.admission().BeginCall(*caller, "Generate");
    if (!call.ok()) {
      finished_ = true;
      Finish(ToGrpcStatus(call.status()));
      return;
    }
    std::shared_ptr<StreamGuard> guard = guard_;
    executor.Submit([this, guard, &manager, request, principal = *caller, call = *std::move(call)]() mutable {
      const auto client_gone = [&] {
        absl::MutexLock lock(&guard->mu);
        return cancelled_;
      };
      // The sampler is killed as soon as the client goes away or its deadline passes, also
      // while it reads a long prompt and has no token to offer yet.
      const absl::Status status = Guarded([&] {
        if (client_gone()) return absl::CancelledError("the client went away");
        return manager.catalog().Generate(
            request, principal,
            [&](const std::string& piece) {
              absl::MutexLock lock(&guard->mu);
              if (cancelled_) return false;
              pending_ += piece;
              MaybeWrite();
              return true;
            },
            client_gone);
      });
      call.reset();  // the tenant's call slot is free before the client sees the end of the stream
      absl::MutexLock lock(&guard->mu);
      closing_ = true;
      status_ = ToGrpcStatus(status);
      MaybeWrite();
    });
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&guard_->mu);
    in_flight_ = false;
    if (!ok) cancelled_ = true;
    MaybeWrite();
  }
  void OnCancel() override {
    absl::MutexLock lock(&guard_->mu);
    cancelled_ = true;  // the sampler stops at its next token; then the stream finishes
  }
  void OnDone() override {
    {
      absl::MutexLock lock(&guard_->mu);
      guard_->alive = false;
    }
    delete this;
  }

 private:
  void MaybeWrite() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu) {
    if (finished_ || in_flight_) return;
    if (!pending_.empty() && !cancelled_) {
      message_.set_text(pending_);
      pending_.clear();
      in_flight_ = true;
      StartWrite(&message_);
      return;
    }
    if (closing_) {
      finished_ = true;
      Finish(cancelled_ ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled") : status_);
    }
  }
  std::shared_ptr<StreamGuard> guard_;
  std::string pending_ ABSL_GUARDED_BY(guard_->mu);
  bool in_flight_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool closing_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool cancelled_ ABSL_GUARDED_BY(guard_->mu) = false;
  bool finished_ ABSL_GUARDED_BY(guard_->mu) = false;
  grpc::Status status_ ABSL_GUARDED_BY(guard_->mu);
  v1::GenerateResponse message_;
};

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::ServerUnaryReactor* SlimService::CreateJob(grpc::CallbackServerContext* context, const v1::CreateJobRequest* request,
                                                 v1::CreateJobResponse* response) {
  return UnaryOnExecutor(auth_, executor_, manager_.admission(), "CreateJob", context,
                         [this, request, response](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::Job> job = manager_.CreateJob(*request, caller);
    if (job.ok()) *response->mutable_job() = *std::move(job);
    return job.status();
  });
}

grpc::ServerUnaryReactor* SlimService::GetJob(grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
                                              v1::GetJobResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::Job> job = manager_.GetJob(request->id(), caller);
    if (job.ok()) *response->mutable_job() = *std::move(job);
    return job.status();
  });
}

grpc::ServerUnaryReactor* SlimService::ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                                v1::ListJobsResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::ListJobsResponse> list = manager_.ListJobs(*request, caller);
    if (list.ok()) *response = *std::move(list);
    return list.status();
  });
}

grpc::ServerUnaryReactor* SlimService::CancelJob(grpc::CallbackServerContext* context, const v1::CancelJobRequest* request,
                                                 v1::CancelJobResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::Job> job = manager_.CancelJob(request->id(), caller);
    if (job.ok()) *response->mutable_job() = *std::move(job);
    return job.status();
  });
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* SlimService::WatchJob(grpc::CallbackServerContext* context,
                                                                      const v1::WatchJobRequest* request) {
  return new WatchReactor(manager_, *request, Caller(auth_, context));
}

grpc::ServerWriteReactor<v1::GetJobLogsResponse>* SlimService::GetJobLogs(grpc::CallbackServerContext* context,
                                                                          const v1::GetJobLogsRequest* request) {
  return NewJobLogsReactor(manager_, log_ticker_, *request, Caller(auth_, context));
}

grpc::ServerUnaryReactor* SlimService::DeleteJob(grpc::CallbackServerContext* context, const v1::DeleteJobRequest* request,
                                                 v1::DeleteJobResponse*) {
  return Unary(auth_, context, [&](const Principal& caller) { return manager_.DeleteJob(request->id(), caller); });
}

grpc::ServerUnaryReactor* SlimService::PlanJob(grpc::CallbackServerContext* context, const v1::PlanJobRequest* request,
                                               v1::PlanJobResponse* response) {
  return UnaryOnExecutor(auth_, executor_, manager_.admission(), "PlanJob", context,
                         [this, request, response](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::PlanJobResponse> plan = manager_.admission().PlanJob(*request, caller);
    if (plan.ok()) *response = *std::move(plan);
    return plan.status();
  });
}

grpc::ServerUnaryReactor* SlimService::ListDevices(grpc::CallbackServerContext* context, const v1::ListDevicesRequest*,
                                                   v1::ListDevicesResponse* response) {
  return Unary(auth_, context, [&](const Principal&) -> absl::Status {
    *response = manager_.ListDevices();
    return absl::OkStatus();
  });
}

grpc::ServerReadReactor<v1::UploadDatasetRequest>* SlimService::UploadDataset(grpc::CallbackServerContext* context,
                                                                              v1::UploadDatasetResponse* response) {
  return new UploadReactor(manager_, executor_, response, Caller(auth_, context));
}

grpc::ServerUnaryReactor* SlimService::GetDataset(grpc::CallbackServerContext* context, const v1::GetDatasetRequest* request,
                                                  v1::GetDatasetResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::Dataset> dataset = manager_.catalog().GetDataset(request->id(), caller);
    if (dataset.ok()) *response->mutable_dataset() = *std::move(dataset);
    return dataset.status();
  });
}

grpc::ServerUnaryReactor* SlimService::ListDatasets(grpc::CallbackServerContext* context,
                                                    const v1::ListDatasetsRequest* request,
                                                    v1::ListDatasetsResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::ListDatasetsResponse> list = manager_.catalog().ListDatasets(*request, caller);
    if (list.ok()) *response = *std::move(list);
    return list.status();
  });
}

grpc::ServerUnaryReactor* SlimService::DeleteDataset(grpc::CallbackServerContext* context,
                                                     const v1::DeleteDatasetRequest* request, v1::DeleteDatasetResponse*) {
  return Unary(auth_, context, [&](const Principal& caller) {
    return manager_.catalog().DeleteDataset(request->id(), request->force(), caller);
  });
}

grpc::ServerUnaryReactor* SlimService::GetModel(grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
                                                v1::GetModelResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::Model> model = manager_.catalog().GetModel(request->id(), caller);
    if (model.ok()) *response->mutable_model() = *std::move(model);
    return model.status();
  });
}

grpc::ServerUnaryReactor* SlimService::ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                                  v1::ListModelsResponse* response) {
  return Unary(auth_, context, [&](const Principal& caller) -> absl::Status {
    absl::StatusOr<v1::ListModelsResponse> list = manager_.catalog().ListModels(*request, caller);
    if (list.ok()) *response = *std::move(list);
    return list.status();
  });
}

grpc::ServerUnaryReactor* SlimService::ImportModel(grpc::CallbackServerContext* context,
                                                   const v1::ImportModelRequest* request,
                                                   v1::ImportModelResponse* response) {
  // Importing reads a file of the server's choosing: admins only.
  return UnaryOnExecutor(auth_, executor_, manager_.admission(), "ImportModel", context,
                         [this, request, response](const Principal& caller) -> absl::Status {
    if (!caller.admin()) return absl::PermissionDeniedError("ImportModel reads files on the server: admins only");
    absl::StatusOr<v1::ImportModelResponse> imported = manager_.catalog().ImportModel(*request);
    if (imported.ok()) *response = *std::move(imported);
    return imported.status();
  });
}

grpc::ServerUnaryReactor* SlimService::DeleteModel(grpc::CallbackServerContext* context,
                                                   const v1::DeleteModelRequest* request, v1::DeleteModelResponse*) {
  return Unary(auth_, context, [&](const Principal& caller) { return manager_.catalog().DeleteModel(request->id(), caller); });
}

grpc::ServerWriteReactor<v1::ExportModelResponse>* SlimService::ExportModel(grpc::CallbackServerContext* context,
                                                                            const v1::ExportModelRequest* request) {
  return new ExportReactor(manager_, *request, Caller(auth_, context));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* SlimService::Generate(grpc::CallbackServerContext* context,
                                                                      const v1::GenerateRequest* request) {
  return new GenerateReactor(manager_, executor_, *request, Caller(auth_, context));
}

}  // namespace slim::server
