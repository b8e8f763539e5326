// SHA-256 (OpenSSL) against the FIPS 180-4 test vectors, fed whole and in odd-sized pieces;
// the constant-time comparison of digests.
#include "base/sha256.h"

#include <gtest/gtest.h>

#include <string>

namespace slim::server {
namespace {

std::string Digest(const std::string& data, size_t piece) {
  Sha256 h;
  for (size_t i = 0; i < data.size(); i += piece) h.Update(data.data() + i, std::min(piece, data.size() - i));
  return h.HexDigest();
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Digest("", 1), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Digest("abc", 1), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(Digest(two_blocks, 7), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(Digest(million, 4096), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(Digest(million, 1000000), Digest(million, 63));
}

TEST(ConstantTimeEqual, ComparesContentAndLength) {
  EXPECT_TRUE(ConstantTimeEqual("", ""));
  EXPECT_TRUE(ConstantTimeEqual(std::string("a\0b", 3), std::string("a\0b", 3)));
  EXPECT_FALSE(ConstantTimeEqual(std::string("a\0b", 3), std::string("a\0c", 3)));
  EXPECT_FALSE(ConstantTimeEqual("abc", "abcd"));
}

}  // namespace
}  // namespace slim::server
