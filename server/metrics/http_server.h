// slimd's HTTP side, on the metrics address: /metrics (Prometheus text format from the
// registry) and / (the read-only status page). One thread serving one request at a time:
// scrapes and a browser are all it has to serve.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace slim::server {

class MetricsHttpServer {
 public:
  // `status_page` renders the HTML of `/` on each request (it must be thread-safe).
  // Errors: INVALID_ARGUMENT if `address` ("host:port"; port 0 picks one) cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                  std::shared_ptr<prometheus::Registry> registry,
                                                                  std::function<std::string()> status_page);
  ~MetricsHttpServer();  // stops serving
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();  // the server thread
  struct Handlers;
  std::unique_ptr<Handlers> handlers_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // written to stop the server thread
  std::thread thread_;
  int port_ = 0;
};

}  // namespace slim::server
