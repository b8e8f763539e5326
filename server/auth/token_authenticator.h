// Bearer-token authentication for slimd (docs/security.md). Tokens live in a tokens file that
// stores only their SHA-256 digests, each bound to a tenant and a role:
//
//   tokens:
//     - {sha256: 5e884898...42d8, tenant: alice, role: user}
//     - {sha256: 9f86d081...0a08, tenant: ops, role: admin}
//
// A request carries "authorization: Bearer <token>"; the token's digest is compared with every
// entry in constant time (no early exit), so timing reveals nothing about which bytes matched.
// Without a tokens file slimd admits everyone as an anonymous admin, which main() allows only
// on a loopback or unix-socket address. Plain C++ with Abseil; no gRPC.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/auth/principal.h"

namespace slim::server {

class TokenAuthenticator {
 public:
  // Reads and checks the tokens file. INVALID_ARGUMENT names the file and entry for a malformed
  // digest (not 64 hex characters), an empty or malformed tenant, an unknown role, a duplicate
  // digest, or no tokens at all.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);
  // Everyone is the anonymous admin (no tokens file).
  static std::unique_ptr<TokenAuthenticator> AllowAll();

  // `authorization`: the request's authorization header, if any. UNAUTHENTICATED (without
  // saying why beyond "missing" or "invalid") unless it is "Bearer <a known token>".
  absl::StatusOr<Principal> Authenticate(const std::optional<std::string>& authorization) const;
  bool requires_tokens() const { return !allow_all_; }

 private:
  struct Entry {
    std::string digest;  // 32 raw bytes
    Principal principal;
  };
  bool allow_all_ = false;
  std::vector<Entry> entries_;
};

}  // namespace slim::server
