#include "base/byte_size.h"

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

int64_t ParseBytes(const std::string& text, const std::string& field) {
  char* end = nullptr;
  const double number = std::strtod(text.c_str(), &end);
  std::string unit(end);
  while (!unit.empty() && unit.front() == ' ') unit.erase(unit.begin());
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},          {"B", 1},         {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}};
  if (end == text.c_str() || !std::isfinite(number) || number < 0) {
    Bad(field + ": '" + text + "' is not a size (examples: 4096, 512MiB, 2GiB, 1.5GB)");
  }
  for (const auto& [name, scale] : kUnits) {
    if (unit == name) {
      const double bytes = number * scale;
      if (bytes > 9.2e18) Bad(field + ": '" + text + "' is too large");
      return static_cast<int64_t>(std::llround(bytes));
    }
  }
  Bad(field + ": unknown unit '" + unit + "' in '" + text + "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
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
