#include "base/tokenizer.h"

#include "base/tokenizer_impl.h"

namespace slim {

std::unique_ptr<Tokenizer> LoadTokenizer(const TokenizerFile& file, const std::string& what) {
  if (file.kind == TokenizerKind::kHfJson) return tokenizer_impl::LoadHfJson(file.bytes, what);
  return tokenizer_impl::LoadSentencePiece(file.bytes, what);
}

}  // namespace slim
