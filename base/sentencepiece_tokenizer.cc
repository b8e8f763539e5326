// SentencePiece models through Debian's libsentencepiece: the library that wrote Llama 2's and
// Mistral's tokenizer.model encodes them, so there is nothing to re-implement.
#include <sentencepiece_processor.h>

#include "base/errors.h"
#include "base/tokenizer_impl.h"

namespace slim::tokenizer_impl {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {}

  TokenizerKind kind() const override { return TokenizerKind::kSentencePiece; }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp_->Encode(absl::string_view(text.data(), text.size()), &ids);
    if (!status.ok()) throw EngineError(ErrorCode::kInvalidArgument, "sentencepiece: " + status.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    const int n = sp_->GetPieceSize();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= n) {
        throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: id " + std::to_string(ids[i]) + " at position " +
                                                           std::to_string(i) + " is outside [0, " +
                                                           std::to_string(n) + ")");
      }
    }
    std::string text;
    const auto status = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok()) throw EngineError(ErrorCode::kInvalidArgument, "sentencepiece: " + status.ToString());
    return text;
  }

  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  int32_t bos_id() const override { return sp_->bos_id(); }
  int32_t eos_id() const override { return sp_->eos_id(); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& proto, const std::string& what) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(absl::string_view(proto.data(), proto.size()));
  if (!status.ok()) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      what + ": not a SentencePiece model (" + status.ToString() + ")");
  }
  if (sp->GetPieceSize() <= 0) throw EngineError(ErrorCode::kInvalidArgument, what + ": SentencePiece model has no pieces");
  return std::make_unique<SentencePieceTokenizer>(std::move(sp));
}

}  // namespace slim::tokenizer_impl
