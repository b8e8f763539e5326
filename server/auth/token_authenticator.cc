#include "server/auth/token_authenticator.h"

#include <cctype>
#include <set>

#include "absl/status/status.h"
#include "base/json.h"
#include "base/yaml.h"
#include "base/sha256.h"

namespace slim::server {
namespace {

// 64 hex characters → 32 bytes; nullopt otherwise.
std::optional<std::string> FromHex(const std::string& hex) {
  if (hex.size() != 64) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < 64; i += 2) {
    int v = 0;
    for (size_t j = i; j < i + 2; ++j) {
      const char c = hex[j];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return std::nullopt;
      v = v * 16 + d;
    }
    out += static_cast<char>(v);
  }
  return out;
}

// Equal without data-dependent branches or early exit.
bool ValidTenant(const std::string& t) {
  if (t.empty() || t.size() > 64) return false;
  for (char c : t) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<TokenAuthenticator> TokenAuthenticator::AllowAll() {
  auto a = std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator());
  a->allow_all_ = true;
  return a;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(const std::string& path) {
  Json doc;
  try {
    doc = ParseStructuredFile(path);
  } catch (const std::runtime_error& e) {
    return absl::InvalidArgumentError(std::string("--tokens-file ") + e.what());
  }
  const auto bad = [&](const std::string& what) { return absl::InvalidArgumentError("--tokens-file " + path + ": " + what); };
  if (doc.kind != Json::kObject || !doc.members.count("tokens") || doc.members.at("tokens").kind != Json::kArray) {
    return bad("must be a mapping with a list 'tokens'");
  }
  auto a = std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator());
  std::set<std::string> seen;
  const std::vector<Json>& items = doc.members.at("tokens").items;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = "tokens[" + std::to_string(i) + "]";
    const Json& item = items[i];
    if (item.kind != Json::kObject) return bad(where + ": must be a mapping {sha256, tenant, role}");
    const auto text = [&](const char* key) -> std::string {
      const auto it = item.members.find(key);
      return it == item.members.end() || it->second.kind != Json::kString ? "" : it->second.text;
    };
    for (const auto& [key, value] : item.members) {
      if (key != "sha256" && key != "tenant" && key != "role") return bad(where + "." + key + ": unknown field");
    }
    const std::optional<std::string> digest = FromHex(text("sha256"));
    if (!digest) return bad(where + ".sha256: must be the 64 hex characters of the token's SHA-256");
    if (!seen.insert(*digest).second) return bad(where + ".sha256: listed twice");
    Entry e;
    e.digest = *digest;
    e.principal.tenant = text("tenant");
    if (!ValidTenant(e.principal.tenant)) return bad(where + ".tenant: 1 to 64 characters of [A-Za-z0-9._-]");
    const std::string role = text("role").empty() ? "user" : text("role");
    if (role == "admin") {
      e.principal.role = Principal::Role::kAdmin;
    } else if (role != "user") {
      return bad(where + ".role: unknown role '" + role + "' (allowed: user, admin)");
    }
    a->entries_.push_back(std::move(e));
  }
  if (a->entries_.empty()) return bad("no tokens");
  return a;
}

absl::StatusOr<Principal> TokenAuthenticator::Authenticate(const std::optional<std::string>& authorization) const {
  if (allow_all_) {
    Principal p;
    p.role = Principal::Role::kAdmin;
    return p;
  }
  static const std::string kBearer = "Bearer ";
  if (!authorization || authorization->compare(0, kBearer.size(), kBearer) != 0 || authorization->size() == kBearer.size()) {
    return absl::UnauthenticatedError("missing bearer token (authorization: Bearer <token>)");
  }
  Sha256 sha;
  sha.Update(authorization->data() + kBearer.size(), authorization->size() - kBearer.size());
  const std::string digest = *FromHex(sha.HexDigest());
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {  // every entry is compared: no early exit
    if (ConstantTimeEqual(e.digest, digest)) match = &e;
  }
  if (match == nullptr) return absl::UnauthenticatedError("invalid token");
  return match->principal;
}

}  // namespace slim::server
