#include "base/json.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "base/errors.h"

namespace slim {

void AppendUtf8(unsigned cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  Json Document() {
    Json v = Value(0);
    Space();
    if (i_ != s_.size()) Fail("trailing characters");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  [[noreturn]] void Fail(const std::string& what) const {
    throw EngineError(ErrorCode::kInvalidArgument, what + " at byte " + std::to_string(i_));
  }
  // RFC 8259 whitespace only (std::isspace would also take \v and \f).
  void Space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  size_t Digits() {
    const size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ - start;
  }
  // The RFC 8259 number grammar, checked by hand before strtod so that strtod's extensions
  // ("-inf", "-nan", hex floats, "01", "1.") never apply; a number too large for a double is an
  // error rather than an infinity that nothing downstream expects.
  double Number() {
    const size_t start = i_;
    if (s_[i_] == '-') ++i_;
    const size_t int_start = i_;
    const size_t int_digits = Digits();
    if (int_digits == 0) Fail("bad number");
    if (int_digits > 1 && s_[int_start] == '0') {
      i_ = int_start;
      Fail("bad number (leading zero)");
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (Digits() == 0) Fail("bad number (no digits after '.')");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (Digits() == 0) Fail("bad number (no digits in the exponent)");
    }
    const double v = std::strtod(s_.substr(start, i_ - start).c_str(), nullptr);
    if (!std::isfinite(v)) {
      i_ = start;
      Fail("number out of range");
    }
    return v;
  }
  char Peek() {
    Space();
    if (i_ >= s_.size()) Fail("unexpected end");
    return s_[i_];
  }
  void Expect(char c) {
    if (Peek() != c) Fail(std::string("expected '") + c + "'");
    ++i_;
  }
  unsigned Hex4() {
    if (i_ + 4 > s_.size()) Fail("bad \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else Fail("bad \\u escape");
    }
    return v;
  }
  std::string String() {
    Expect('"');
    std::string out;
    while (true) {
      if (i_ >= s_.size()) Fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) Fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) Fail("bad escape");
      const char e = s_[i_++];
      if (e == 'u') {
        unsigned cp = Hex4();
        if (cp >= 0xD800 && cp <= 0xDBFF) {  // high surrogate: a low one must follow
          if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') Fail("unpaired surrogate");
          i_ += 2;
          const unsigned low = Hex4();
          if (low < 0xDC00 || low > 0xDFFF) Fail("unpaired surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          Fail("unpaired surrogate");
        }
        AppendUtf8(cp, &out);
        continue;
      }
      const char* from = "\"\\/bfnrt";
      const char* to = "\"\\/\b\f\n\r\t";
      const char* p = std::strchr(from, e);
      if (p == nullptr || e == '\0') Fail("bad escape");
      out += to[p - from];
    }
    return out;
  }
  bool Literal(const char* word) {
    const size_t n = std::strlen(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Json Value(int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    Json v;
    const char c = Peek();
    if (c == '"') {
      v.kind = Json::kString;
      v.text = String();
    } else if (c == '[') {
      v.kind = Json::kArray;
      ++i_;
      if (Peek() == ']') {
        ++i_;
        return v;
      }
      while (true) {
        v.items.push_back(Value(depth + 1));
        if (Peek() == ',') {
          ++i_;
          continue;
        }
        Expect(']');
        break;
      }
    } else if (c == '{') {
      v.kind = Json::kObject;
      ++i_;
      if (Peek() == '}') {
        ++i_;
        return v;
      }
      while (true) {
        const std::string key = String();
        Expect(':');
        v.members[key] = Value(depth + 1);
        if (Peek() == ',') {
          ++i_;
          continue;
        }
        Expect('}');
        break;
      }
    } else if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      v.kind = Json::kNumber;
      v.number = Number();
    } else if (Literal("true")) {
      v.kind = Json::kBool;
      v.boolean = true;
    } else if (Literal("false")) {
      v.kind = Json::kBool;
    } else if (Literal("null")) {
      v.kind = Json::kNull;
    } else {
      Fail("unexpected character");
    }
    return v;
  }

  const std::string& s_;
  size_t i_ = 0;
};

}  // namespace

Json ParseJson(const std::string& text) { return Parser(text).Document(); }

std::string JsonEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

namespace {

void Serialize(const Json& v, std::string* out) {
  switch (v.kind) {
    case Json::kNull: *out += "null"; return;
    case Json::kBool: *out += v.boolean ? "true" : "false"; return;
    case Json::kString: *out += '"' + JsonEscape(v.text) + '"'; return;
    case Json::kNumber: {
      if (!std::isfinite(v.number)) {
        throw EngineError(ErrorCode::kInvalidArgument, "JSON cannot hold a non-finite number");
      }
      char buf[32];
      if (v.number == std::floor(v.number) && std::fabs(v.number) < 9007199254740992.0) {
        std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v.number));
      } else {
        std::snprintf(buf, sizeof(buf), "%.17g", v.number);
      }
      *out += buf;
      return;
    }
    case Json::kArray: {
      *out += '[';
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i) *out += ',';
        Serialize(v.items[i], out);
      }
      *out += ']';
      return;
    }
    case Json::kObject: {
      *out += '{';
      bool first = true;
      for (const auto& [key, member] : v.members) {
        if (!first) *out += ',';
        first = false;
        *out += '"' + JsonEscape(key) + "\":";
        Serialize(member, out);
      }
      *out += '}';
      return;
    }
  }
}

}  // namespace

std::string SerializeJson(const Json& value) {
  std::string out;
  Serialize(value, &out);
  return out;
}

Json JsonString(const std::string& text) {
  Json j;
  j.kind = Json::kString;
  j.text = text;
  return j;
}

Json JsonNumber(double number) {
  Json j;
  j.kind = Json::kNumber;
  j.number = number;
  return j;
}

Json JsonObject() {
  Json j;
  j.kind = Json::kObject;
  return j;
}

Json JsonArray() {
  Json j;
  j.kind = Json::kArray;
  return j;
}

std::string DescribeJson(const Json& value) {
  switch (value.kind) {
    case Json::kString: return "'" + value.text + "'";
    case Json::kNumber:
      if (!std::isfinite(value.number)) return value.number != value.number ? "nan" : value.number > 0 ? "inf" : "-inf";
      return SerializeJson(value);
    case Json::kBool: return SerializeJson(value);
    case Json::kNull: return "null";
    case Json::kArray: return "a list";
    case Json::kObject: return "a mapping";
  }
  return "?";
}

}  // namespace slim
