#include "base/byte_size.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "base/errors.h"

namespace slim {
namespace {
[[noreturn]] void Bad(const std::string& message) {
  throw EngineError(ErrorCode::kInvalidArgument, message);
}
}  // namespace

int64_t ParseBytes(const std::string& text_in, const std::string& field) {
  // Echoed in messages with control characters (a NUL, escapes) shown as '?'.
  std::string text = text_in;
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  // Strict: a decimal number (digits, an optional fraction and exponent), optional spaces, a
  // unit, and nothing else; no sign, no hexadecimal, no NUL that would end the text early.
  const size_t number_end = text_in.find_first_not_of("0123456789.eE+-");
  const std::string number_text = text_in.substr(0, number_end);
  char* end = nullptr;
  const double number = std::strtod(number_text.c_str(), &end);
  if (number_text.empty() || !std::isdigit(static_cast<unsigned char>(number_text[0])) ||
      end != number_text.c_str() + number_text.size() || !std::isfinite(number) || number < 0) {
    Bad(field + ": '" + text + "' is not a size (examples: 4096, 512MiB, 2GiB, 1.5GB)");
  }
  std::string unit = number_end == std::string::npos ? "" : text_in.substr(number_end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},          {"B", 1},         {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}};
  for (const auto& [name, scale] : kUnits) {
    if (unit == name) {
      const double bytes = number * scale;
      if (bytes > 9.2e18) Bad(field + ": '" + text + "' is too large");
      return static_cast<int64_t>(std::llround(bytes));
    }
  }
  Bad(field + ": unknown unit '" + text.substr(text.size() - unit.size()) + "' in '" + text +
      "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
}

std::string FormatBytes(int64_t bytes) {
  static const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (std::fabs(v) >= 1024 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), unit == 0 ? "%.0f %s" : "%.1f %s", v, kNames[unit]);
  return buf;
}

}  // namespace slim
