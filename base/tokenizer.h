// Tokenizers: text (bytes) ↔ token ids for models with a vocabulary other than bytes. Two kinds,
// read from the files Hugging Face checkpoints ship:
//   - `hf-json`: a `tokenizer.json` of the Hugging Face tokenizers library with a BPE model —
//     byte-level BPE (GPT-2, Llama 3, Qwen2) and BPE with byte fallback (Llama 2 / Mistral as
//     converted by transformers). Pre-tokenizer regular expressions run on PCRE2 with Unicode
//     properties, as the Rust library runs them on Oniguruma.
//   - `sentencepiece`: a SentencePiece `tokenizer.model` (Llama 2, Mistral) through
//     libsentencepiece.
// Plain C++ (no LibTorch). A loaded Tokenizer is immutable: Encode and Decode may be called from
// several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/tokenizer_file.h"

namespace slim {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text`, without any BOS/EOS added (callers add them where they mean to). Special
  // and added tokens written out in the text (`<|endoftext|>`) become their ids, as the Hugging
  // Face libraries do by default. Throws EngineError(kInvalidArgument) if the text has a
  // character the vocabulary cannot express (no byte fallback, no unknown token) or a
  // pre-tokenizer expression exceeds its match limit.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;

  // The bytes of `ids`. For hf-json tokenizers Decode(Encode(text)) == text for every byte
  // string (byte-level BPE; invalid UTF-8 included), and for any text the vocabulary expresses
  // (byte fallback). SentencePiece replaces invalid UTF-8 with U+FFFD when encoding, so only
  // valid UTF-8 comes back unchanged. Throws EngineError(kInvalidArgument) for an id outside
  // [0, vocab_size) or one that names no token.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;

  // One more than the largest id the tokenizer produces or accepts.
  virtual int64_t vocab_size() const = 0;
  // Beginning/end-of-sequence ids, -1 when the tokenizer has none.
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
};

// Parses `file` (slim_tokenizer). `what` names it in errors ("tokenizer.json", "model:
// tokenizer"). Throws EngineError(kInvalidArgument) "<what>: ..." naming what is wrong: malformed JSON, a
// model type other than BPE, an unsupported normalizer/pre-tokenizer/decoder (by type), a
// regular expression PCRE2 refuses (with its error and offset), a merge naming a token that is
// not in the vocabulary, duplicate or negative ids, a malformed SentencePiece protobuf. The
// SentencePiece kind needs the slim_sentencepiece module (base/sentencepiece_module.h).
std::unique_ptr<Tokenizer> LoadTokenizer(const TokenizerFile& file, const std::string& what);

// The byte vocabulary of models without a tokenizer: id = byte value, vocab_size 256, no
// BOS/EOS. Decode refuses ids outside [0, 256). (In slim_spec: no tokenizer library needed.)
std::unique_ptr<Tokenizer> ByteTokenizer();

}  // namespace slim
