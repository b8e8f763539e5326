// Tokenizer files as slim stores them: the kind and the exact bytes of a Hugging Face
// tokenizer.json or a SentencePiece tokenizer.model. Model files carry one (docs/model-format.md);
// base/tokenizer.h parses it. Plain C++ without the parsers' libraries, so that model files can
// carry tokenizers in builds that never encode text (the engine-only and fuzz builds).
#pragma once

#include <string>

namespace slim {

enum class TokenizerKind { kHfJson, kSentencePiece };

// "hf-json", "sentencepiece"; ParseTokenizerKind throws EngineError(kInvalidArgument) naming
// `field` and the allowed names.
std::string TokenizerKindName(TokenizerKind kind);
TokenizerKind ParseTokenizerKind(const std::string& name, const std::string& field);

// A tokenizer as it is stored: its kind and the bytes of its file, exactly as read. This is
// what travels inside model files (docs/model-format.md); Tokenizer objects are built from it.
struct TokenizerFile {
  TokenizerKind kind = TokenizerKind::kHfJson;
  std::string bytes;
};

// The tokenizer in `path`: a `tokenizer.json` (hf-json) or `tokenizer.model` (sentencepiece)
// file, or a directory holding one (tokenizer.json preferred: where a checkpoint ships both, it is
// the one transformers loads by default). A file's kind comes from its name: `*.json` is
// hf-json, `*.model` sentencepiece. Throws EngineError(kInvalidArgument) naming the path when it
// cannot be read, is a directory with neither file, or has another name. Does not parse.
TokenizerFile ReadTokenizerFile(const std::string& path);
// Whether directory `dir` holds a tokenizer.json or tokenizer.model (import-hf's question).
bool HasTokenizerFile(const std::string& dir);

}  // namespace slim
