// SHA-256, incremental, through OpenSSL's EVP digest API (libcrypto, which gRPC links already):
// dataset checksums and token digests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

struct evp_md_ctx_st;

namespace slim::server {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  // The digest as 64 lowercase hex characters. Call once; the object is spent afterwards.
  std::string HexDigest();

 private:
  evp_md_ctx_st* ctx_;
};

// The SHA-256 of a file's bytes as 64 lowercase hex characters, and its size in bytes
// (`size` may be null); false when it cannot be opened or read.
bool Sha256OfFile(const std::string& path, std::string* hex, int64_t* size = nullptr);

// Equality of two strings in time that depends only on their lengths (OpenSSL's
// CRYPTO_memcmp): for comparing secrets' digests.
bool ConstantTimeEqual(const std::string& a, const std::string& b);

}  // namespace slim::server
