// Command-line flags for slim's tools: `--name value`, `--name=value`, bare `--name`
// booleans, optional one-letter aliases (`-o json` for `--output json`, `-h` for `--help`), and
// positional arguments (anything else, e.g. `slimctl get job-000001`; a lone `-` is one). Plain C++ (no LibTorch), so every tool and test can use it. Errors are
// EngineError(kInvalidArgument) naming the flag.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/byte_size.h"

namespace slim::tools {

class Flags {
 public:
  // argv[0] is skipped (the program or subcommand name). Flags named in `booleans` never take
  // the next argument as their value, so `--watch job-1` leaves job-1 positional.
  // `short_names` maps one-letter aliases to flag names ({'o', "output"}).
  Flags(int argc, char** argv, const std::set<std::string>& booleans = {},
        const std::map<char, std::string>& short_names = {});

  // Getters mark a flag as used. A negative/empty default means "required".
  std::string String(const std::string& name, const std::string& default_value) const;
  int64_t Int(const std::string& name, int64_t default_value, int64_t min) const;
  double Double(const std::string& name, double default_value) const;
  int64_t Bytes(const std::string& name, int64_t default_value) const;  // accepts units
  bool Bool(const std::string& name) const;
  // Comma-separated lists ("8192,65536"); each item checked as by Int / Bytes.
  std::vector<std::string> List(const std::string& name, const std::vector<std::string>& default_value) const;
  std::vector<int64_t> IntList(const std::string& name, const std::vector<int64_t>& default_value,
                               int64_t min) const;
  std::vector<int64_t> BytesList(const std::string& name) const;  // empty when absent
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // Positional argument i; `what` names it in the error when it is missing.
  std::string Positional(size_t i, const std::string& what) const;
  size_t positional_count() const { return positional_.size(); }

  // Throws for any flag given but never asked for (a typo must not be ignored; the message
  // suggests the closest flag that was asked for), and for positional arguments beyond those
  // asked for.
  void CheckAllUsed() const;

 private:
  const std::string* Find(const std::string& name) const;
  mutable std::set<std::string> asked_;  // every name a getter was called with, given or not
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
  mutable std::set<std::string> used_;
  mutable size_t positional_used_ = 0;
};

// The candidate closest to `word` by edit distance, if it is close enough to be a typo of it (at
// most 2 edits, and fewer than half of the word's length); "" otherwise. For "did you mean".
std::string ClosestMatch(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace slim::tools
