// Counts every RPC by method and status code and times it (slim_rpc_requests_total,
// slim_rpc_duration_seconds), as a gRPC server interceptor so handlers stay free of metrics.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include "server/metrics/service_metrics.h"

namespace slim::server {

class RpcMetricsInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsInterceptorFactory(ServiceMetrics& metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  ServiceMetrics& metrics_;
};

}  // namespace slim::server
