// slimd's HTTP side, on the metrics address: /metrics (Prometheus text format from the
// registry) and / (the read-only status page), served by GNU libmicrohttpd: a small pool of
// threads multiplexing every connection, so a slow or silent client holds one connection slot
// (until the idle timeout) and never the threads that answer scrapes. Optional TLS and basic
// authentication come from a web configuration file (web_config.h).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "server/metrics/web_config.h"

struct MHD_Daemon;

namespace slim::server {

struct MetricsHttpOptions {
  std::string address;  // "host:port"; port 0 picks one
  WebConfig web;        // TLS and users; default: plain HTTP, no authentication
  int threads = 2;
  int max_connections = 64;      // beyond it new connections are refused at once
  int idle_timeout_seconds = 10;  // a connection idle this long is closed
  // A request taking longer than this (from the connection's opening or its previous request's
  // end, until its response is read) ends its connection, however slowly the client trickles
  // bytes; a scrape takes milliseconds.
  int request_deadline_seconds = 30;
};

class MetricsHttpServer {
 public:
  // `status_page` renders the HTML of `/` on each request; it is called from several threads.
  // Errors: INVALID_ARGUMENT if `address` cannot be bound, naming --metrics-address.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const MetricsHttpOptions& options,
                                                                  std::shared_ptr<prometheus::Registry> registry,
                                                                  std::function<std::string()> status_page);
  ~MetricsHttpServer();  // stops serving; requests in progress finish first
  int port() const { return port_; }
  bool tls() const { return !web_.cert_chain_pem.empty(); }

 private:
  struct Callbacks;    // libmicrohttpd's, in the .cc
  struct Connections;  // open connections and their start times

  MetricsHttpServer(const MetricsHttpOptions& options, std::shared_ptr<prometheus::Registry> registry,
                    std::function<std::string()> status_page);
  const WebConfig web_;
  const int request_deadline_seconds_;  // owns the PEM texts libmicrohttpd reads
  BasicAuthUsers users_;
  const std::shared_ptr<prometheus::Registry> registry_;
  const std::function<std::string()> status_page_;
  const std::unique_ptr<Connections> connections_;
  void EndOverdueConnections();  // the watchdog thread: ends connections past the deadline
  std::thread watchdog_;
  MHD_Daemon* daemon_ = nullptr;
  int port_ = 0;
};

}  // namespace slim::server
