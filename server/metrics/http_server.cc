#include "server/metrics/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <string>

// A deliberately small HTTP/1.0-style server: one thread, one request per connection, GET
// only. Enough for Prometheus scrapes and a status page in a browser, with nothing to
// configure. (Debian's civetweb 1.15 failed to start its worker threads inside slimd.)

namespace slim::server {
namespace {

constexpr size_t kMaxRequestBytes = 16 * 1024;

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

std::string Response(int status, const char* reason, const char* content_type, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n" +
         body;
}

}  // namespace

struct MetricsHttpServer::Handlers {
  std::shared_ptr<prometheus::Registry> registry;
  std::function<std::string()> status_page;
};

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& address,
                                                                             std::shared_ptr<prometheus::Registry> registry,
                                                                             std::function<std::string()> status_page) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError("--metrics-address: '" + address + "' is not HOST:PORT");
  }
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
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
  const bool ok = fd >= 0 && ::bind(fd, found->ai_addr, found->ai_addrlen) == 0 && ::listen(fd, 16) == 0;
  const std::string reason = std::strerror(errno);
  ::freeaddrinfo(found);
  if (!ok) {
    if (fd >= 0) ::close(fd);
    return absl::InvalidArgumentError("--metrics-address: cannot listen on " + address + ": " + reason);
  }
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  s->listen_fd_ = fd;
  s->handlers_ = std::make_unique<Handlers>(Handlers{std::move(registry), std::move(status_page)});
  if (::pipe2(s->wake_fds_, O_CLOEXEC) != 0) {
    ::close(fd);
    return absl::InternalError("--metrics-address: cannot create a pipe");
  }
  s->thread_ = std::thread([server = s.get()] { server->Serve(); });
  return s;
}

void MetricsHttpServer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;  // stopping
    const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    // Read the request head (a slow or silent client gets 2 s).
    std::string request;
    char buf[2048];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequestBytes) {
      pollfd in{client, POLLIN, 0};
      if (::poll(&in, 1, 2000) <= 0) break;
      const ssize_t n = ::recv(client, buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    const size_t first_space = request.find(' ');
    const size_t second_space = request.find(' ', first_space + 1);
    const std::string method = request.substr(0, first_space);
    std::string path = first_space == std::string::npos ? "" : request.substr(first_space + 1, second_space - first_space - 1);
    path = path.substr(0, path.find('?'));
    if (method != "GET") {
      SendAll(client, Response(405, "Method Not Allowed", "text/plain", "only GET\n"));
    } else if (path == "/metrics") {
      SendAll(client, Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                               prometheus::TextSerializer().Serialize(handlers_->registry->Collect())));
    } else if (path == "/" || path == "/index.html") {
      SendAll(client, Response(200, "OK", "text/html; charset=utf-8", handlers_->status_page()));
    } else {
      SendAll(client, Response(404, "Not Found", "text/plain", "not found: try / or /metrics\n"));
    }
    ::close(client);
  }
}

MetricsHttpServer::~MetricsHttpServer() {
  if (thread_.joinable()) {
    const char byte = 1;
    (void)!::write(wake_fds_[1], &byte, 1);
    thread_.join();
  }
  for (int fd : {listen_fd_, wake_fds_[0], wake_fds_[1]}) {
    if (fd >= 0) ::close(fd);
  }
}

}  // namespace slim::server
