#include "base/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace slim {
namespace {

std::string Assemble(const std::string& bytes) {
  Utf8Assembler a;
  std::string out;
  for (char c : bytes) out += a.Push(static_cast<uint8_t>(c));
  return out + a.Finish();
}

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8Assembler, ValidTextPassesThroughWhole) {
  const std::string text = "plain, caf\xC3\xA9, \xE2\x82\xAC 5, \xF0\x9F\x98\x80!";  // é, €, 😀
  EXPECT_EQ(Assemble(text), text);
  // A character is returned only once complete.
  Utf8Assembler a;
  EXPECT_EQ(a.Push(0xE2), "");
  EXPECT_EQ(a.Push(0x82), "");
  EXPECT_EQ(a.Push(0xAC), "\xE2\x82\xAC");
}

TEST(Utf8Assembler, InvalidBytesBecomeOneReplacementEach) {
  EXPECT_EQ(Assemble("a\x80z"), "a" + kFffd + "z");              // stray continuation
  EXPECT_EQ(Assemble("\xC0\xAF"), kFffd + kFffd);                 // overlong lead, then a stray
  EXPECT_EQ(Assemble("\xE2\x82z"), kFffd + "z");                   // cut short by ASCII
  EXPECT_EQ(Assemble("\xE2\x82\xE2\x82\xAC"), kFffd + "\xE2\x82\xAC");  // cut short by a new lead
  EXPECT_EQ(Assemble("\xED\xA0\x80"), kFffd + kFffd + kFffd);      // a surrogate (U+D800)
  EXPECT_EQ(Assemble("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // past U+10FFFF
  EXPECT_EQ(Assemble("\xFF"), kFffd);
  EXPECT_EQ(Assemble("ok\xF0\x9F"), "ok" + kFffd);                 // the stream ends mid-character
}

// Any byte stream comes out as valid UTF-8 (checked by a decoder written independently here).
TEST(Utf8Assembler, EveryByteStreamBecomesValidUtf8) {
  const auto valid = [](const std::string& s) {
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = s[i];
      size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (n == 0 || i + n > s.size()) return false;
      uint32_t cp = n == 1 ? c : c & (0x7F >> n);
      for (size_t k = 1; k < n; ++k) {
        const unsigned char d = s[i + k];
        if ((d & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (d & 0x3F);
      }
      const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
      if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
      i += n;
    }
    return true;
  };
  uint64_t x = 88172645463325252ull;  // xorshift: 200 streams of random bytes, biased high
  for (int stream = 0; stream < 200; ++stream) {
    std::string bytes;
    for (int i = 0; i < 64; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      bytes += static_cast<char>(0x70 + x % 0x90);
    }
    EXPECT_TRUE(valid(Assemble(bytes))) << "stream " << stream;
  }
}

}  // namespace
}  // namespace slim
