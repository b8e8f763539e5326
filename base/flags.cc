#include "base/flags.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "base/errors.h"

namespace slim::tools {

namespace {
[[noreturn]] void Bad(const std::string& message) {
  throw EngineError(ErrorCode::kInvalidArgument, message);
}
}  // namespace

Flags::Flags(int argc, char** argv, const std::set<std::string>& booleans,
             const std::map<char, std::string>& short_names) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    // "-o json", "-o=json", "-h": a one-letter alias stands for its long name.
    if (arg.size() >= 2 && arg[0] == '-' && arg[1] != '-' && short_names.count(arg[1]) &&
        (arg.size() == 2 || arg[2] == '=')) {
      arg = "--" + short_names.at(arg[1]) + arg.substr(2);
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      positional_.push_back(arg);
      continue;
    }
    arg = arg.substr(2);
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      values_[arg.substr(0, eq)] = arg.substr(eq + 1);
    } else if (!booleans.count(arg) && i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      values_[arg] = argv[++i];
    } else {
      values_[arg] = "";  // a boolean
    }
  }
}

std::string Flags::Positional(size_t i, const std::string& what) const {
  if (i >= positional_.size()) Bad(what + " is required");
  positional_used_ = std::max(positional_used_, i + 1);
  return positional_[i];
}

const std::string* Flags::Find(const std::string& name) const {
  asked_.insert(name);
  const auto it = values_.find(name);
  if (it == values_.end()) return nullptr;
  used_.insert(name);
  return &it->second;
}

std::string Flags::String(const std::string& name, const std::string& default_value) const {
  const std::string* v = Find(name);
  if (v == nullptr) {
    if (default_value.empty()) Bad("--" + name + " is required");
    return default_value;
  }
  if (v->empty()) Bad("--" + name + " needs a value");
  return *v;
}

int64_t Flags::Int(const std::string& name, int64_t default_value, int64_t min) const {
  const std::string* v = Find(name);
  if (v == nullptr) {
    if (default_value < 0) Bad("--" + name + " is required");
    return default_value;
  }
  char* end = nullptr;
  const long long n = std::strtoll(v->c_str(), &end, 10);
  if (v->empty() || *end != '\0') Bad("--" + name + ": '" + *v + "' is not an integer");
  if (n < min) Bad("--" + name + ": " + *v + " must be >= " + std::to_string(min));
  return n;
}

double Flags::Double(const std::string& name, double default_value) const {
  const std::string* v = Find(name);
  if (v == nullptr) return default_value;
  char* end = nullptr;
  const double d = std::strtod(v->c_str(), &end);
  if (v->empty() || *end != '\0' || !std::isfinite(d)) Bad("--" + name + ": '" + *v + "' is not a number");
  return d;
}

int64_t Flags::Bytes(const std::string& name, int64_t default_value) const {
  const std::string* v = Find(name);
  if (v == nullptr) {
    if (default_value < 0) Bad("--" + name + " is required");
    return default_value;
  }
  return ParseBytes(*v, "--" + name);
}

bool Flags::Bool(const std::string& name) const {
  const std::string* v = Find(name);
  if (v == nullptr) return false;
  if (v->empty() || *v == "true" || *v == "1") return true;
  if (*v == "false" || *v == "0") return false;
  Bad("--" + name + ": '" + *v + "' is not a boolean");
}

std::vector<std::string> Flags::List(const std::string& name,
                                     const std::vector<std::string>& default_value) const {
  const std::string* v = Find(name);
  if (v == nullptr) return default_value;
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = v->find(',', start);
    items.push_back(v->substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (items.back().empty()) Bad("--" + name + ": empty item in '" + *v + "'");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

std::vector<int64_t> Flags::IntList(const std::string& name, const std::vector<int64_t>& default_value,
                                    int64_t min) const {
  if (!Has(name)) return default_value;
  std::vector<int64_t> out;
  for (const std::string& item : List(name, {})) {
    char* end = nullptr;
    const long long n = std::strtoll(item.c_str(), &end, 10);
    if (*end != '\0') Bad("--" + name + ": '" + item + "' is not an integer");
    if (n < min) Bad("--" + name + ": " + item + " must be >= " + std::to_string(min));
    out.push_back(n);
  }
  return out;
}

std::vector<int64_t> Flags::BytesList(const std::string& name) const {
  std::vector<int64_t> out;
  for (const std::string& item : List(name, {})) out.push_back(ParseBytes(item, "--" + name));
  return out;
}

void Flags::CheckAllUsed() const {
  if (positional_used_ < positional_.size()) Bad("unexpected argument '" + positional_[positional_used_] + "'");
  for (const auto& [name, value] : values_) {
    if (used_.count(name)) continue;
    const std::string near = ClosestMatch(name, std::vector<std::string>(asked_.begin(), asked_.end()));
    Bad("unknown flag --" + name + (near.empty() ? "" : " (did you mean --" + near + "?)"));
  }
}

std::string ClosestMatch(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = 3;
  for (const std::string& c : candidates) {
    // Levenshtein distance, one row at a time.
    std::vector<size_t> row(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= c.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (word[i - 1] == c[j - 1] ? 0 : 1)});
        diagonal = up;
      }
    }
    if (row[c.size()] < best_distance && 2 * row[c.size()] < word.size()) best = c, best_distance = row[c.size()];
  }
  return best;
}

}  // namespace slim::tools
