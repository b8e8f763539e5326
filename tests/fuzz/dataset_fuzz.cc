// Fuzz target: training data files as the worker and slimd's upload check read them. The input
// is a file, read by ReadTokens in every format with several vocabulary sizes; what is read is
// then packed (CountSequences) and split (SplitSequences). Expected failures are EngineError;
// anything else is a finding. Invariants: every id is < vocab_size; id files give one id per
// 2 or 4 bytes; a split is a permutation of the sequences with the validation share asked for.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/dataset.h"
#include "base/errors.h"
#include "tests/fuzz/fuzz_support.h"

namespace slim::fuzz {
namespace {

void CheckPackingAndSplit(size_t num_tokens, uint8_t knob) {
  const int64_t seq_len = 1 + knob % 16;
  int64_t n = 0;
  try {
    n = CountSequences(static_cast<int64_t>(num_tokens), seq_len, "train");
  } catch (const EngineError&) {
    Check(static_cast<int64_t>(num_tokens) < seq_len + 1, "CountSequences refused enough tokens");
    return;
  }
  Check(n == (static_cast<int64_t>(num_tokens) - 1) / seq_len, "CountSequences miscounted");
  const double fraction = (knob >> 4) / 16.0;  // 0 .. 15/16
  const DataSplit split = SplitSequences(n, fraction, knob);
  std::vector<int64_t> all = split.train;
  all.insert(all.end(), split.validation.begin(), split.validation.end());
  std::sort(all.begin(), all.end());
  Check(all.size() == static_cast<size_t>(n), "split does not hold every sequence once");
  for (int64_t i = 0; i < n; ++i) Check(all[i] == i, "split is not a permutation");
  Check(!split.train.empty(), "split left no training sequences");
  if (fraction > 0 && n >= 2) Check(!split.validation.empty(), "split left no validation sequences");
}

}  // namespace
}  // namespace slim::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace slim;
  const fuzz::MemoryFile file(data, size);
  const uint8_t knob = size > 0 ? data[0] : 0;
  struct Case {
    DataFormat format;
    int64_t vocab_size;
  };
  const Case cases[] = {
      {DataFormat::kText, 256},       {DataFormat::kText, 100},        {DataFormat::kJsonl, 256},
      {DataFormat::kJsonl, 70000},    {DataFormat::kIdsU16, 2},        {DataFormat::kIdsU16, 1000},
      {DataFormat::kIdsU16, 65536},   {DataFormat::kIdsU32, 300},      {DataFormat::kIdsU32, int64_t{1} << 31},
      {DataFormat::kIdsU32, 1},       {DataFormat::kIdsU32, (int64_t{1} << 31) + 1},
  };
  for (const Case& c : cases) {
    DataSource source;
    source.path = file.path();
    source.format = c.format;
    source.vocab_size = c.vocab_size;
    source.text_field = knob % 2 ? "text" : "body";
    std::vector<int32_t> tokens;
    try {
      tokens = ReadTokens(source);
    } catch (const EngineError&) {
      continue;
    }
    if (c.format != DataFormat::kText) fuzz::MarkAccepted();  // text takes any non-empty file
    fuzz::Check(c.vocab_size >= 2 && c.vocab_size <= (int64_t{1} << 31), "a vocab_size out of range was accepted");
    for (int32_t id : tokens) fuzz::Check(id >= 0 && id < c.vocab_size, "an id is out of range");
    if (c.format == DataFormat::kText) fuzz::Check(tokens.size() == size, "text: not one id per byte");
    if (c.format == DataFormat::kIdsU16) fuzz::Check(tokens.size() * 2 == size, "ids-u16: not one id per 2 bytes");
    if (c.format == DataFormat::kIdsU32) fuzz::Check(tokens.size() * 4 == size, "ids-u32: not one id per 4 bytes");
    fuzz::CheckPackingAndSplit(tokens.size(), knob);
  }
  return 0;
}
