#include "server/auth/tls_files.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <iterator>
#include <memory>

#include "absl/strings/str_cat.h"

namespace slim::server {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

absl::StatusOr<std::string> ReadFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::unique_ptr<BIO, BioFree> Memory(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM text, or null.
std::unique_ptr<X509, X509Free> FirstCertificate(const std::string& pem) {
  auto bio = Memory(pem);
  return std::unique_ptr<X509, X509Free>(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

}  // namespace

absl::StatusOr<TlsFiles> ReadTlsFiles(const std::string& cert_path, const std::string& key_path,
                                      const std::string& client_ca_path, const TlsFileSettings& settings) {
  TlsFiles files;
  auto cert_pem = ReadFile(cert_path, settings.cert);
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = ReadFile(key_path, settings.key);
  if (!key_pem.ok()) return key_pem.status();
  files.cert_chain_pem = *std::move(cert_pem);
  files.private_key_pem = *std::move(key_pem);

  const auto cert = FirstCertificate(files.cert_chain_pem);
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(settings.cert, ": ", cert_path, " holds no PEM certificate"));
  }
  auto key_bio = Memory(files.private_key_pem);
  const std::unique_ptr<EVP_PKEY, KeyFree> key(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr);
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(settings.key, ": ", key_path, " holds no unencrypted PEM private key"));
  }
  const int matches = X509_check_private_key(cert.get(), key.get());
  ERR_clear_error();
  if (matches != 1) {
    return absl::InvalidArgumentError(absl::StrCat(settings.key, ": ", key_path, " does not match the certificate in ",
                                                   settings.cert, " (", cert_path, ")"));
  }
  if (!client_ca_path.empty()) {
    auto ca_pem = ReadFile(client_ca_path, settings.client_ca);
    if (!ca_pem.ok()) return ca_pem.status();
    files.client_ca_pem = *std::move(ca_pem);
    if (FirstCertificate(files.client_ca_pem) == nullptr) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat(settings.client_ca, ": ", client_ca_path, " holds no PEM certificate"));
    }
  }
  return files;
}

}  // namespace slim::server
