// SHA-256 (FIPS 180-4), incremental, for verifying uploaded datasets without OpenSSL.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace slim::server {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  // The digest as 64 lowercase hex characters. Call once; the object is spent afterwards.
  std::string HexDigest();

 private:
  void Block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace slim::server
