#include "engine/model_text.h"

#include "base/errors.h"
#ifdef SLIM_WITH_TOKENIZERS
#include "base/text_tokens.h"
#endif

namespace slim {

std::unique_ptr<Tokenizer> ModelTokenizer(const PerformerLMImpl& model, const std::string& what) {
  const int64_t vocab = model.config().vocab_size;
  if (!model.tokenizer_file()) {
    CheckArgument(vocab >= 256, what + ": the model has no tokenizer and a vocabulary of " + std::to_string(vocab) +
                                    " ids, fewer than the 256 bytes text needs (train it on ids-u16/ids-u32 data)");
    return ByteTokenizer();
  }
#ifndef SLIM_WITH_TOKENIZERS
  throw EngineError(ErrorCode::kInvalidArgument,
                    what + ": the model carries a " + TokenizerKindName(model.tokenizer_file()->kind) +
                        " tokenizer, but this build of slim has none (built without OpenSSL, PCRE2, ICU or "
                        "libsentencepiece; docs/model-format.md)");
#else
  std::unique_ptr<Tokenizer> tokenizer = LoadTokenizer(*model.tokenizer_file(), what + ": tokenizer");
  // A model may have more embeddings than its tokenizer has ids (vocabularies padded to a
  // multiple of 64 or 128), never fewer.
  CheckArgument(tokenizer->vocab_size() <= vocab,
                what + ": the tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                    " ids but the model's vocab_size is " + std::to_string(vocab));
  return tokenizer;
#endif
}

std::vector<int32_t> ReadModelTokens(DataSource source, const PerformerLMImpl& model, const std::string& token_cache_dir) {
  source.vocab_size = model.config().vocab_size;
  const bool text = source.format == DataFormat::kText || source.format == DataFormat::kJsonl;
  if (!text || !model.tokenizer_file()) return ReadTokens(source);
  const std::unique_ptr<Tokenizer> tokenizer = ModelTokenizer(model, "model");
#ifdef SLIM_WITH_TOKENIZERS
  return ReadTextTokens(source, *tokenizer, *model.tokenizer_file(), token_cache_dir);
#else
  (void)token_cache_dir;
  return {};  // unreachable: ModelTokenizer refused the model
#endif
}

}  // namespace slim
