#include "base/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include "base/errors.h"
#include "base/json.h"

namespace slim {
namespace {

[[noreturn]] void Bad(const std::string& message) {
  throw EngineError(ErrorCode::kInvalidArgument, message);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Bad(path + ": cannot open");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) Bad(path + ": read error");
  if (bytes.empty()) Bad(path + ": empty file");
  return bytes;
}

void AppendBytes(const std::string& text, std::vector<int32_t>* out) {
  for (unsigned char c : text) out->push_back(c);
}

// The string `field` of one JSONL object; `where` starts the error message.
const std::string& TextField(const std::string& where, const Json& doc, const std::string& field) {
  const auto found = doc.members.find(field);
  if (found == doc.members.end()) Bad(where + "no \"" + field + "\" field");
  if (found->second.kind != Json::kString) Bad(where + "\"" + field + "\" is not a string");
  return found->second.text;
}

// Calls `each(line_prefix, object)` for every non-blank line of a JSONL file, each of which must
// be a JSON object; at least one. `line_prefix` is "<path>:<line>: " for messages.
template <typename Each>
void ForEachJsonlObject(const std::string& path, const std::string& bytes, const Each& each) {
  std::istringstream lines(bytes);
  std::string line;
  int64_t number = 0, documents = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
    const std::string where = path + ":" + std::to_string(number) + ": ";
    Json doc;
    try {
      doc = ParseJson(line);
    } catch (const std::exception& e) {
      Bad(where + "invalid JSON: " + e.what());
    }
    if (doc.kind != Json::kObject) Bad(where + "expected a JSON object");
    ++documents;
    each(where, doc);
  }
  if (documents == 0) Bad(path + ": no documents (only blank lines)");
}

std::vector<int32_t> ReadJsonl(const DataSource& s, const std::string& bytes) {
  std::vector<int32_t> tokens;
  bool first = true;
  ForEachJsonlObject(s.path, bytes, [&](const std::string& where, const Json& doc) {
    if (!first) tokens.push_back('\n');
    first = false;
    AppendBytes(TextField(where, doc, s.text_field), &tokens);
  });
  return tokens;
}

std::vector<int32_t> ReadIds(const DataSource& s, const std::string& bytes, int width) {
  if (bytes.size() % width != 0) {
    Bad(s.path + ": size " + std::to_string(bytes.size()) + " bytes is not a whole number of " +
        std::to_string(width) + "-byte ids");
  }
  std::vector<int32_t> tokens(bytes.size() / width);
  for (size_t i = 0; i < tokens.size(); ++i) {
    uint64_t id = 0;
    for (int b = 0; b < width; ++b) id |= uint64_t{static_cast<unsigned char>(bytes[i * width + b])} << (8 * b);
    if (id >= static_cast<uint64_t>(s.vocab_size)) {
      Bad(s.path + ": id " + std::to_string(id) + " at byte offset " + std::to_string(i * width) +
          " is >= vocab_size " + std::to_string(s.vocab_size));
    }
    tokens[i] = static_cast<int32_t>(id);
  }
  return tokens;
}

}  // namespace

std::string DataFormatName(DataFormat f) {
  switch (f) {
    case DataFormat::kText: return "text";
    case DataFormat::kJsonl: return "jsonl";
    case DataFormat::kIdsU16: return "ids-u16";
    case DataFormat::kIdsU32: return "ids-u32";
  }
  return "unknown";
}

DataFormat ParseDataFormat(const std::string& name, const std::string& field) {
  for (DataFormat f : {DataFormat::kText, DataFormat::kJsonl, DataFormat::kIdsU16, DataFormat::kIdsU32}) {
    if (DataFormatName(f) == name) return f;
  }
  Bad(field + ": unknown value '" + name + "' (allowed: text, jsonl, ids-u16, ids-u32)");
}

void CheckJsonlObjects(const std::string& path) {
  ForEachJsonlObject(path, ReadFile(path), [](const std::string&, const Json&) {});
}

void CheckJsonlTextField(const std::string& path, const std::string& text_field, const std::string& label) {
  ForEachJsonlObject(label, ReadFile(path),
                     [&](const std::string& where, const Json& doc) { TextField(where, doc, text_field); });
}

std::vector<int32_t> ReadTokens(const DataSource& s) {
  CheckArgument(s.vocab_size >= 2 && s.vocab_size <= (int64_t{1} << 31),
                s.path + ": vocab_size " + std::to_string(s.vocab_size) + " is out of range [2, 2^31]");
  if ((s.format == DataFormat::kText || s.format == DataFormat::kJsonl) && s.vocab_size < 256) {
    Bad(s.path + ": " + DataFormatName(s.format) + " data is bytes and needs vocab_size >= 256, got " +
        std::to_string(s.vocab_size));
  }
  const std::string bytes = ReadFile(s.path);
  switch (s.format) {
    case DataFormat::kText: {
      std::vector<int32_t> tokens;
      tokens.reserve(bytes.size());
      AppendBytes(bytes, &tokens);
      return tokens;
    }
    case DataFormat::kJsonl: return ReadJsonl(s, bytes);
    case DataFormat::kIdsU16: return ReadIds(s, bytes, 2);
    case DataFormat::kIdsU32: return ReadIds(s, bytes, 4);
  }
  Bad(s.path + ": unknown format");
}

int64_t CountSequences(int64_t num_tokens, int64_t seq_len, const std::string& what) {
  CheckArgument(seq_len >= 1, "seq_len: " + std::to_string(seq_len) + " must be >= 1");
  const int64_t n = num_tokens > 0 ? (num_tokens - 1) / seq_len : 0;
  CheckArgument(n >= 1, what + ": " + std::to_string(num_tokens) + " tokens are fewer than one sequence of " +
                            std::to_string(seq_len) + " plus its target (" + std::to_string(seq_len + 1) + ")");
  return n;
}

std::vector<int64_t> ShuffledOrder(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  // Fisher-Yates with mt19937_64 (specified exactly by the standard) and a plain modulo, so the
  // order is the same with every standard library (std::uniform_int_distribution is not).
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng() % static_cast<uint64_t>(i + 1)]);
  return order;
}

DataSplit SplitSequences(int64_t n, double validation_fraction, uint64_t seed) {
  CheckArgument(validation_fraction >= 0 && validation_fraction < 1,
                "validation_fraction: must be in [0, 1), got " + std::to_string(validation_fraction));
  const std::vector<int64_t> order = ShuffledOrder(n, seed);
  int64_t validation = static_cast<int64_t>(std::llround(validation_fraction * n));
  if (validation_fraction > 0 && n >= 2) validation = std::clamp<int64_t>(validation, 1, n - 1);
  if (n >= 1) validation = std::min(validation, n - 1);  // one sequence trains; none is held out
  DataSplit split;
  split.train.assign(order.begin(), order.end() - validation);
  split.validation.assign(order.end() - validation, order.end());
  return split;
}

}  // namespace slim
