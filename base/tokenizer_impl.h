// The two tokenizer implementations behind LoadTokenizer (base/tokenizer.h). Internal to
// slim_tokenizer; tests may use them directly.
#pragma once

#include <memory>
#include <string>

#include "base/tokenizer.h"

namespace slim::tokenizer_impl {

// A Hugging Face tokenizer.json with a BPE model. Errors as LoadTokenizer's.
std::unique_ptr<Tokenizer> LoadHfJson(const std::string& json, const std::string& what);

// A serialized SentencePiece ModelProto. Errors as LoadTokenizer's.
std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& proto, const std::string& what);

}  // namespace slim::tokenizer_impl
