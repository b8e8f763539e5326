#include "server/metrics/http_server.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <string>

namespace slim::server {

// The open connections with when each one's current request began (the connection's opening,
// or the end of its previous request: keep-alive clients such as Prometheus reuse connections),
// so a watchdog can end those past the request deadline. libmicrohttpd's own timeout is for
// idleness only: a client trickling one byte a second is never idle. Ending one means shutdown(2) on its socket; libmicrohttpd then sees the
// connection fail and closes it itself, and removes it from here (NOTIFY_CLOSED) before it
// closes the descriptor, so the watchdog, holding `mu`, never touches a reused descriptor.
struct MetricsHttpServer::Connections {
  absl::Mutex mu;
  std::map<MHD_Connection*, std::pair<int, std::chrono::steady_clock::time_point>> open ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
};

namespace {

using Clock = std::chrono::steady_clock;

MHD_Result Queue(MHD_Connection* connection, unsigned status, const std::string& content_type, const std::string& body,
                 bool ask_for_password = false) {
  MHD_Response* response =
      MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(response, "Content-Type", content_type.c_str());
  MHD_add_response_header(response, "Cache-Control", "no-store");
  const MHD_Result queued = ask_for_password ? MHD_queue_basic_auth_fail_response(connection, "slimd", response)
                                             : MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return queued;
}

// A TLS client that presented a certificate the client CA signed (the handshake only asks).
bool ClientCertificateVerified(MHD_Connection* connection) {
  const MHD_ConnectionInfo* info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  if (info == nullptr || info->tls_session == nullptr) return false;
  const auto session = static_cast<gnutls_session_t>(info->tls_session);
  unsigned int listed = 0;
  if (gnutls_certificate_get_peers(session, &listed) == nullptr || listed == 0) return false;
  unsigned int verdict = 1;
  return gnutls_certificate_verify_peers2(session, &verdict) == GNUTLS_E_SUCCESS && verdict == 0;
}

}  // namespace

struct MetricsHttpServer::Callbacks {
  static MHD_Result Answer(void* cls, MHD_Connection* connection, const char* url, const char* method,
                           const char* /*version*/, const char* /*upload_data*/, size_t* upload_data_size,
                           void** /*request_context*/) {
    auto* server = static_cast<MetricsHttpServer*>(cls);
    if (!server->web_.client_ca_pem.empty() && !ClientCertificateVerified(connection)) {
      return Queue(connection, MHD_HTTP_FORBIDDEN, "text/plain", "a client certificate signed by the client CA is required\n");
    }
    if (server->users_.enabled()) {
      char* password = nullptr;
      char* user = MHD_basic_auth_get_username_password(connection, &password);
      const bool allowed = user != nullptr && password != nullptr && server->users_.Check(user, password);
      MHD_free(user);
      MHD_free(password);
      if (!allowed) return Queue(connection, MHD_HTTP_UNAUTHORIZED, "text/plain", "authentication required\n", true);
    }
    if (std::strcmp(method, "GET") != 0 && std::strcmp(method, "HEAD") != 0) {
      return Queue(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    if (*upload_data_size != 0) return Queue(connection, MHD_HTTP_BAD_REQUEST, "text/plain", "a GET has no body\n");
    const std::string path = url;
    if (path == "/metrics") {
      return Queue(connection, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                   prometheus::TextSerializer().Serialize(server->registry_->Collect()));
    }
    if (path == "/" || path == "/index.html") {
      return Queue(connection, MHD_HTTP_OK, "text/html; charset=utf-8", server->status_page_());
    }
    return Queue(connection, MHD_HTTP_NOT_FOUND, "text/plain", "not found: try / or /metrics\n");
  }

  static void Completed(void* cls, MHD_Connection* connection, void** /*request_context*/,
                        MHD_RequestTerminationCode /*how*/) {
    auto* connections = static_cast<Connections*>(cls);
    absl::MutexLock lock(&connections->mu);
    if (auto it = connections->open.find(connection); it != connections->open.end()) it->second.second = Clock::now();
  }

  static void Notify(void* cls, MHD_Connection* connection, void** /*socket_context*/,
                     MHD_ConnectionNotificationCode code) {
    auto* connections = static_cast<Connections*>(cls);
    absl::MutexLock lock(&connections->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      const MHD_ConnectionInfo* info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
      if (info != nullptr) connections->open[connection] = {info->connect_fd, Clock::now()};
    } else {
      connections->open.erase(connection);
    }
  }
};

MetricsHttpServer::MetricsHttpServer(const MetricsHttpOptions& options, std::shared_ptr<prometheus::Registry> registry,
                                     std::function<std::string()> status_page)
    : web_(options.web),
      request_deadline_seconds_(options.request_deadline_seconds),
      users_(options.web.basic_auth_users),
      registry_(std::move(registry)),
      status_page_(std::move(status_page)),
      connections_(std::make_unique<Connections>()) {}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const MetricsHttpOptions& options,
                                                                             std::shared_ptr<prometheus::Registry> registry,
                                                                             std::function<std::string()> status_page) {
  const std::string& address = options.address;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError("--metrics-address: '" + address + "' is not HOST:PORT");
  }
  // Bound here rather than by libmicrohttpd, so that a failure names its cause.
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::InvalidArgumentError("--metrics-address: cannot resolve '" + address + "'");
  }
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  const int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  const bool ok = fd >= 0 && ::bind(fd, found->ai_addr, found->ai_addrlen) == 0 && ::listen(fd, 64) == 0;
  const std::string reason = std::strerror(errno);
  ::freeaddrinfo(found);
  if (!ok) {
    if (fd >= 0) ::close(fd);
    return absl::InvalidArgumentError("--metrics-address: cannot listen on " + address + ": " + reason);
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);

  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer(options, std::move(registry), std::move(status_page)));
  s->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;
  std::vector<MHD_OptionItem> settings = {
      {MHD_OPTION_LISTEN_SOCKET, fd, nullptr},
      {MHD_OPTION_THREAD_POOL_SIZE, options.threads, nullptr},
      {MHD_OPTION_CONNECTION_LIMIT, options.max_connections, nullptr},
      {MHD_OPTION_CONNECTION_TIMEOUT, options.idle_timeout_seconds, nullptr},
      {MHD_OPTION_CONNECTION_MEMORY_LIMIT, 32 * 1024, nullptr},
      {MHD_OPTION_NOTIFY_CONNECTION, reinterpret_cast<intptr_t>(&Callbacks::Notify), s->connections_.get()},
      {MHD_OPTION_NOTIFY_COMPLETED, reinterpret_cast<intptr_t>(&Callbacks::Completed), s->connections_.get()},
      {MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1, nullptr},  // slimd ignores SIGPIPE
  };
  if (s->tls()) {
    flags |= MHD_USE_TLS;
    // Prometheus' default: TLS 1.2 and newer.
    settings.push_back({MHD_OPTION_HTTPS_PRIORITIES, 0,
                        const_cast<char*>("NORMAL:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1")});
    settings.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0, const_cast<char*>(s->web_.cert_chain_pem.c_str())});
    settings.push_back({MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(s->web_.private_key_pem.c_str())});
    if (!s->web_.client_ca_pem.empty()) {
      settings.push_back({MHD_OPTION_HTTPS_MEM_TRUST, 0, const_cast<char*>(s->web_.client_ca_pem.c_str())});
    }
  }
  settings.push_back({MHD_OPTION_END, 0, nullptr});
  s->daemon_ = MHD_start_daemon(flags, 0, nullptr, nullptr, &Callbacks::Answer, s.get(), MHD_OPTION_ARRAY,
                                settings.data(), MHD_OPTION_END);
  if (s->daemon_ == nullptr) {
    ::close(fd);
    return absl::InternalError("--metrics-address: libmicrohttpd could not start serving " + address +
                               (s->tls() ? " with the TLS certificate and key of the web configuration" : ""));
  }
  s->watchdog_ = std::thread([server = s.get()] { server->EndOverdueConnections(); });
  return s;
}

void MetricsHttpServer::EndOverdueConnections() {
  Connections& c = *connections_;
  const auto deadline = std::chrono::seconds(request_deadline_seconds_);
  absl::MutexLock lock(&c.mu);
  while (!c.stopping) {
    c.mu.AwaitWithTimeout(absl::Condition(&c.stopping), absl::Seconds(1));
    const auto now = Clock::now();
    for (const auto& [connection, opened] : c.open) {
      if (now - opened.second > deadline) ::shutdown(opened.first, SHUT_RDWR);
    }
  }
}

MetricsHttpServer::~MetricsHttpServer() {
  {
    absl::MutexLock lock(&connections_->mu);
    connections_->stopping = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
  // Closes the listening socket (passed in, libmicrohttpd owns it) and every connection.
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

}  // namespace slim::server
