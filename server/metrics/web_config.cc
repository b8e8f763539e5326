#include "server/metrics/web_config.h"

#include <crypt.h>

#include <filesystem>
#include <set>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "base/sha256.h"
#include "base/yaml.h"
#include "server/auth/tls_files.h"

namespace slim::server {
namespace {

namespace fs = std::filesystem;

// The settings of Prometheus' web configuration slimd implements; any other key is refused.
const std::set<std::string> kTopLevel = {"tls_server_config", "basic_auth_users"};
const std::set<std::string> kTls = {"cert_file", "key_file", "client_auth_type", "client_ca_file"};

absl::Status CheckKeys(const std::string& path, const std::string& where, const Json& mapping,
                       const std::set<std::string>& known) {
  for (const auto& [key, value] : mapping.members) {
    if (known.count(key) == 0) {
      std::string list;
      for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", where, key,
                                                     " is not a setting slimd implements (it knows ", list, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Text(const std::string& path, const std::string& name, const Json& value) {
  if (value.kind != Json::kString || value.text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " must be a non-empty string, not ",
                                                   DescribeJson(value)));
  }
  return value.text;
}

// bcrypt hashes as crypt(3) writes them: $2a$, $2b$ or $2y$, a two-digit cost, 53 characters.
bool IsBcrypt(const std::string& hash) {
  return hash.size() == 60 && hash[0] == '$' && hash[1] == '2' && (hash[2] == 'a' || hash[2] == 'b' || hash[2] == 'y') &&
         hash[3] == '$' && hash[6] == '$';
}

absl::StatusOr<WebConfig> Read(const std::string& path) {
  const Json doc = ParseStructuredFile(path);  // throws, with the path and position, on bad YAML
  if (doc.kind == Json::kNull) return WebConfig{};
  if (doc.kind != Json::kObject) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be a mapping, not ", DescribeJson(doc)));
  }
  if (absl::Status s = CheckKeys(path, "", doc, kTopLevel); !s.ok()) return s;
  WebConfig config;
  const fs::path folder = fs::path(path).parent_path();
  auto resolve = [&](const std::string& file) { return fs::path(file).is_absolute() ? file : (folder / file).string(); };

  if (auto tls = doc.members.find("tls_server_config"); tls != doc.members.end() && tls->second.kind != Json::kNull) {
    const Json& t = tls->second;
    if (t.kind != Json::kObject) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tls_server_config must be a mapping, not ", DescribeJson(t)));
    }
    if (absl::Status s = CheckKeys(path, "tls_server_config.", t, kTls); !s.ok()) return s;
    auto member = [&](const std::string& key) { return t.members.count(key) ? t.members.at(key) : Json{}; };
    auto cert = Text(path, "tls_server_config.cert_file", member("cert_file"));
    if (!cert.ok()) return cert.status();
    auto key = Text(path, "tls_server_config.key_file", member("key_file"));
    if (!key.ok()) return key.status();
    std::string auth_type = "NoClientCert";
    if (member("client_auth_type").kind != Json::kNull) {
      auto given = Text(path, "tls_server_config.client_auth_type", member("client_auth_type"));
      if (!given.ok()) return given.status();
      auth_type = *given;
    }
    std::string client_ca;
    if (auth_type == "RequireAndVerifyClientCert") {
      auto ca = Text(path, "tls_server_config.client_ca_file (needed by RequireAndVerifyClientCert)",
                     member("client_ca_file"));
      if (!ca.ok()) return ca.status();
      client_ca = resolve(*ca);
    } else if (auth_type != "NoClientCert") {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tls_server_config.client_auth_type '", auth_type,
                                                     "' is not implemented by slimd (NoClientCert or "
                                                     "RequireAndVerifyClientCert)"));
    } else if (member("client_ca_file").kind != Json::kNull) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tls_server_config.client_ca_file is set but client_auth_type is not RequireAndVerifyClientCert"));
    }
    const TlsFileSettings names{path + ": tls_server_config.cert_file", path + ": tls_server_config.key_file",
                                path + ": tls_server_config.client_ca_file"};
    absl::StatusOr<TlsFiles> files = ReadTlsFiles(resolve(*cert), resolve(*key), client_ca, names);
    if (!files.ok()) return files.status();
    config.cert_chain_pem = std::move(files->cert_chain_pem);
    config.private_key_pem = std::move(files->private_key_pem);
    config.client_ca_pem = std::move(files->client_ca_pem);
  }

  if (auto users = doc.members.find("basic_auth_users"); users != doc.members.end() && users->second.kind != Json::kNull) {
    if (users->second.kind != Json::kObject) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": basic_auth_users must be a mapping of user name to bcrypt hash, not ",
                       DescribeJson(users->second)));
    }
    for (const auto& [user, hash] : users->second.members) {
      if (user.empty() || user.find(':') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": basic_auth_users: user name '", user, "' must be non-empty and hold no ':'"));
      }
      if (hash.kind != Json::kString || !IsBcrypt(hash.text)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": basic_auth_users.", user,
                                                       " must be a bcrypt hash ($2y$..., as htpasswd -nB writes)"));
      }
      config.basic_auth_users[user] = hash.text;
    }
  }
  return config;
}

}  // namespace

absl::StatusOr<WebConfig> ReadWebConfig(const std::string& path) {
  try {
    return Read(path);
  } catch (const std::exception& e) {  // ParseStructuredFile's syntax and read errors name the path
    return absl::InvalidArgumentError(e.what());
  }
}

bool BasicAuthUsers::Check(const std::string& user, const std::string& password) {
  const auto hash = hashes_.find(user);
  if (hash == hashes_.end()) return false;
  Sha256 digest;
  digest.Update(user.data(), user.size());
  digest.Update("\0", 1);
  digest.Update(password.data(), password.size());
  const std::string key = digest.HexDigest();
  {
    absl::MutexLock lock(&mu_);
    if (auto it = remembered_.find(key); it != remembered_.end()) return it->second;
  }
  crypt_data scratch{};
  const char* computed = crypt_rn(password.c_str(), hash->second.c_str(), &scratch, sizeof(scratch));
  const bool matched = computed != nullptr && password.find('\0') == std::string::npos &&
                       ConstantTimeEqual(std::string(computed), hash->second);
  absl::MutexLock lock(&mu_);
  if (remembered_.size() >= kRemembered) remembered_.clear();
  remembered_[key] = matched;
  return matched;
}

}  // namespace slim::server
