// The gRPC adapter of slimd (callback API): each handler validates what only the transport can
// see, calls the JobManager, and converts its absl::Status once (ToGrpcStatus). Slow calls run
// on an Executor, never on gRPC's threads. Streams write one message at a time and reach
// Finish exactly once on every path (completion, error, client cancel, server shutdown).
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "server/api/executor.h"
#include "server/api/job_logs.h"
#include "server/auth/token_authenticator.h"
#include "server/jobs/job_manager.h"
#include "slim/v1/slim.grpc.pb.h"

namespace slim::server {

// The one mapping from absl::Status to grpc::Status.
grpc::Status ToGrpcStatus(const absl::Status& status);

class SlimService final : public v1::Slim::CallbackService {
 public:
  // `executor` runs planning, model loading and generation; `auth` admits requests (every
  // method requires a valid token unless it allows all). All three outlive the service.
  SlimService(JobManager& manager, Executor& executor, const TokenAuthenticator& auth)
      : manager_(manager), executor_(executor), auth_(auth) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* context, const v1::CreateJobRequest* request,
                                      v1::CreateJobResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
                                   v1::GetJobResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const v1::CancelJobRequest* request,
                                      v1::CancelJobResponse* response) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(grpc::CallbackServerContext* context,
                                                           const v1::WatchJobRequest* request) override;
  grpc::ServerWriteReactor<v1::GetJobLogsResponse>* GetJobLogs(grpc::CallbackServerContext* context,
                                                               const v1::GetJobLogsRequest* request) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context, const v1::DeleteJobRequest* request,
                                      v1::DeleteJobResponse* response) override;
  grpc::ServerUnaryReactor* PlanJob(grpc::CallbackServerContext* context, const v1::PlanJobRequest* request,
                                    v1::PlanJobResponse* response) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* context, const v1::ListDevicesRequest* request,
                                        v1::ListDevicesResponse* response) override;
  grpc::ServerReadReactor<v1::UploadDatasetRequest>* UploadDataset(grpc::CallbackServerContext* context,
                                                                   v1::UploadDatasetResponse* response) override;
  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* context, const v1::GetDatasetRequest* request,
                                       v1::GetDatasetResponse* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* context, const v1::ListDatasetsRequest* request,
                                         v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* context, const v1::DeleteDatasetRequest* request,
                                          v1::DeleteDatasetResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
                                     v1::GetModelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context, const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* ImportModel(grpc::CallbackServerContext* context, const v1::ImportModelRequest* request,
                                        v1::ImportModelResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context, const v1::DeleteModelRequest* request,
                                        v1::DeleteModelResponse* response) override;
  grpc::ServerWriteReactor<v1::ExportModelResponse>* ExportModel(grpc::CallbackServerContext* context,
                                                                 const v1::ExportModelRequest* request) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;

 private:
  JobManager& manager_;
  Executor& executor_;
  const TokenAuthenticator& auth_;
  PollTicker log_ticker_{absl::Milliseconds(500)};  // GetJobLogs with follow polls the files
};

}  // namespace slim::server
