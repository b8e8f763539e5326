#include "server/metrics/rpc_metrics_interceptor.h"

#include <chrono>
#include <string>

namespace slim::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

std::string CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                 "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

// One per RPC; gRPC destroys it when the call is done, which is when the RPC is recorded.
class RpcMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(ServiceMetrics& metrics, const char* method)
      : metrics_(metrics), start_(std::chrono::steady_clock::now()) {
    const std::string full = method == nullptr ? "" : method;  // "/slim.v1.Slim/CreateJob"
    method_ = full.substr(full.find_last_of('/') + 1);
  }
  ~RpcMetricsInterceptor() override {
    metrics_.OnRpc(method_, CodeName(code_),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      code_ = methods->GetSendStatus().error_code();
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics& metrics_;
  std::string method_;
  std::chrono::steady_clock::time_point start_;
  grpc::StatusCode code_ = grpc::StatusCode::CANCELLED;  // no status sent: the client went away
};

}  // namespace

grpc::experimental::Interceptor* RpcMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new RpcMetricsInterceptor(metrics_, info->method());
}

}  // namespace slim::server
