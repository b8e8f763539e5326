// The optional TLS and basic-authentication settings of slimd's HTTP side (/metrics and the
// status page), read from a file in the format of Prometheus' own web configuration
// (https://prometheus.io/docs/prometheus/latest/configuration/https/), so that one file serves
// Prometheus, its exporters and slimd:
//
//   tls_server_config:
//     cert_file: server.crt          # paths relative to the file's own folder
//     key_file: server.key
//     client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (the default)
//     client_ca_file: clients.crt
//   basic_auth_users:
//     prometheus: $2y$10$...         # bcrypt hashes (htpasswd -nBC 10 NAME)
//
// Settings of that format slimd does not implement (cipher suites, TLS versions, headers, ...)
// are refused by name rather than ignored, so a file never promises what it does not do.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace slim::server {

struct WebConfig {
  std::string cert_chain_pem, private_key_pem;  // both empty: plain HTTP
  std::string client_ca_pem;                    // non-empty: client certificates required and verified
  std::map<std::string, std::string> basic_auth_users;  // user name -> bcrypt hash; empty: no authentication
};

// Reads and checks `path`: YAML of the format above, TLS files readable and matching (checked as
// --tls-cert is), every password hash a bcrypt hash. INVALID_ARGUMENT naming the file and the
// setting that is wrong.
absl::StatusOr<WebConfig> ReadWebConfig(const std::string& path);

// Checks user names and passwords against bcrypt hashes. bcrypt is slow on purpose (~50 ms at
// cost 10), too slow to pay on every scrape: pairs that matched once are remembered (as their
// SHA-256, at most kRemembered of them) and match again without bcrypt. Thread-safe.
class BasicAuthUsers {
 public:
  explicit BasicAuthUsers(std::map<std::string, std::string> hashes) : hashes_(std::move(hashes)) {}
  bool enabled() const { return !hashes_.empty(); }
  bool Check(const std::string& user, const std::string& password);

 private:
  static constexpr size_t kRemembered = 64;
  const std::map<std::string, std::string> hashes_;
  absl::Mutex mu_;
  std::map<std::string, bool> remembered_ ABSL_GUARDED_BY(mu_);  // digest of user, password -> matched
};

}  // namespace slim::server
