#include "base/sha256.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace slim::server {
namespace {

// Failures here mean the library is unusable (allocation failure, a FIPS provider refusing
// SHA-256): nothing sensible can continue with a wrong checksum.
void Check(int ok, const char* what) {
  if (ok != 1) {
    std::fprintf(stderr, "slim: OpenSSL %s failed\n", what);
    std::abort();
  }
}

}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  Check(ctx_ != nullptr ? 1 : 0, "EVP_MD_CTX_new");
  Check(EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr), "EVP_DigestInit_ex(sha256)");
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, size_t size) {
  if (size > 0) Check(EVP_DigestUpdate(ctx_, data, size), "EVP_DigestUpdate");
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  Check(EVP_DigestFinal_ex(ctx_, digest, &length), "EVP_DigestFinal_ex");
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 15]);
  }
  return out;
}

bool ConstantTimeEqual(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool Sha256OfFile(const std::string& path, std::string* hex, int64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  Sha256 sha;
  int64_t total = 0;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof(buf));
    sha.Update(buf, static_cast<size_t>(in.gcount()));
    total += in.gcount();
  }
  if (in.bad()) return false;
  *hex = sha.HexDigest();
  if (size != nullptr) *size = total;
  return true;
}

}  // namespace slim::server
