// Fuzz target: Hugging Face tokenizer.json files as import-hf reads them from a checkpoint
// (LoadTokenizer, hf-json), then encoding with an accepted tokenizer: a fixed text with every
// kind of character the pre-tokenizers treat apart, and the input's own first bytes as text.
// Expected failures are EngineError (a refused file; a text the vocabulary cannot express or an
// expression over its match limit); anything else is a finding. Invariants: every id is in
// [0, vocab_size) and decodes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/errors.h"
#include "base/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace slim;
  const std::string json(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<Tokenizer> tokenizer;
  try {
    tokenizer = LoadTokenizer({TokenizerKind::kHfJson, json}, "tokenizer.json");
  } catch (const EngineError&) {
    return 0;
  }
  fuzz::MarkAccepted();
  const std::string texts[] = {
      "Hello, world! I'm here:  123 4567\n\n\tcaf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80 <|endoftext|> \xFF\xFE",
      json.substr(0, 256),
  };
  for (const std::string& text : texts) {
    std::vector<int32_t> ids;
    try {
      ids = tokenizer->Encode(text);
    } catch (const EngineError&) {
      continue;
    }
    for (int32_t id : ids) fuzz::Check(id >= 0 && id < tokenizer->vocab_size(), "an id is out of range");
    try {
      tokenizer->Decode(ids);
    } catch (const EngineError&) {
      fuzz::Check(false, "ids from Encode do not decode");
    }
  }
  return 0;
}
