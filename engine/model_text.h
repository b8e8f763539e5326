// How a model reads and writes text: through the tokenizer its file carries
// (docs/model-format.md, "Tokenizer"), or as bytes for models without one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/dataset.h"
#include "base/tokenizer.h"
#include "engine/model.h"

namespace slim {

// The model's tokenizer, parsed from the file it carries; for a model without one, the byte
// vocabulary. Throws EngineError(kInvalidArgument) "<what>: ..." when the carried tokenizer does
// not parse, when its vocabulary is larger than the model's (ids without an embedding), or when a
// model without a tokenizer has vocab_size < 256 (its ids are not bytes).
std::unique_ptr<Tokenizer> ModelTokenizer(const PerformerLMImpl& model, const std::string& what);

// The ids of a training or evaluation source for `model`: ReadTokens (base/dataset.h) for
// id files and for models without a tokenizer; text and JSONL sources of a model with one are
// encoded with it (base/text_tokens.h), cached in `token_cache_dir` ("" = no cache).
std::vector<int32_t> ReadModelTokens(DataSource source, const PerformerLMImpl& model, const std::string& token_cache_dir);

}  // namespace slim
