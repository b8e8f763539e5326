// A small JSON reader for the formats slim reads itself (safetensors headers, JSONL datasets):
// objects, arrays, strings (with \u escapes, surrogate pairs included, decoded to UTF-8),
// numbers, true/false/null. Plain C++; no LibTorch.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace slim {

struct Json {
  enum Kind { kNull, kBool, kString, kNumber, kArray, kObject } kind = kNull;
  bool boolean = false;
  std::string text;                     // kString
  double number = 0;                    // kNumber
  std::vector<Json> items;              // kArray
  std::map<std::string, Json> members;  // kObject
};

// Values for building documents.
Json JsonString(const std::string& text);
Json JsonNumber(double number);
Json JsonObject();  // empty
Json JsonArray();   // empty

// RFC 8259 JSON: strict number grammar, a number beyond the range of a double is an error, a
// duplicate object key keeps the last value. Throws EngineError(kInvalidArgument, "... at byte
// N") (base/errors.h; a std::runtime_error) for malformed input or trailing characters.
Json ParseJson(const std::string& text);

// Compact JSON text for `value`: object members in key order (std::map), integral numbers
// below 2^53 without a fraction, others with 17 significant digits (they read back exactly).
// Throws EngineError(kInvalidArgument) for a non-finite number (JSON has none).
std::string SerializeJson(const Json& value);

// A value as an error message shows it: 'text', 5, true, "a list", "a mapping", "null".
std::string DescribeJson(const Json& value);

// Appends code point `cp` (≤ 0x10FFFF) to `out` as UTF-8.
void AppendUtf8(unsigned cp, std::string* out);

// The body of a JSON string literal for `text` (quotes and backslashes escaped, control
// characters as \u00XX); bytes ≥ 0x80 pass through, so UTF-8 stays UTF-8.
std::string JsonEscape(const std::string& text);

}  // namespace slim
