#include "base/tokenizer_file.h"

#include <sys/stat.h>

#include <fstream>
#include <iterator>

#include "base/errors.h"

namespace slim {
namespace {

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string TokenizerKindName(TokenizerKind kind) {
  return kind == TokenizerKind::kHfJson ? "hf-json" : "sentencepiece";
}

TokenizerKind ParseTokenizerKind(const std::string& name, const std::string& field) {
  if (name == "hf-json") return TokenizerKind::kHfJson;
  if (name == "sentencepiece") return TokenizerKind::kSentencePiece;
  throw EngineError(ErrorCode::kInvalidArgument,
                    field + ": unknown tokenizer kind '" + name + "' (known: hf-json, sentencepiece)");
}

bool HasTokenizerFile(const std::string& dir) {
  return IsRegularFile(dir + "/tokenizer.json") || IsRegularFile(dir + "/tokenizer.model");
}

TokenizerFile ReadTokenizerFile(const std::string& path) {
  std::string file = path;
  if (IsDirectory(path)) {
    if (IsRegularFile(path + "/tokenizer.json")) {
      file = path + "/tokenizer.json";
    } else if (IsRegularFile(path + "/tokenizer.model")) {
      file = path + "/tokenizer.model";
    } else {
      throw EngineError(ErrorCode::kInvalidArgument,
                        "tokenizer: directory " + path + " has neither tokenizer.json nor tokenizer.model");
    }
  }
  TokenizerFile out;
  if (EndsWith(file, ".json")) {
    out.kind = TokenizerKind::kHfJson;
  } else if (EndsWith(file, ".model")) {
    out.kind = TokenizerKind::kSentencePiece;
  } else {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "tokenizer: " + file +
                          ": unknown kind of file (want a Hugging Face tokenizer.json or a SentencePiece "
                          "tokenizer.model)");
  }
  if (!IsRegularFile(file)) throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: " + file + ": no such file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: cannot read " + file);
  out.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: cannot read " + file);
  if (out.bytes.empty()) throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: " + file + " is empty");
  return out;
}

}  // namespace slim
