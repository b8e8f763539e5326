// The byte vocabulary (base/tokenizer.h): plain C++, in slim_spec, so that builds without the
// tokenizer libraries still read and write text for byte models.
#include "base/errors.h"
#include "base/tokenizer.h"

namespace slim {
namespace {

class Bytes : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text) const override {
    return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                                reinterpret_cast<const unsigned char*>(text.data()) + text.size());
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] > 255) {
        throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: id " + std::to_string(ids[i]) + " at position " +
                                                           std::to_string(i) + " is outside [0, 256) (bytes)");
      }
      out += static_cast<char>(ids[i]);
    }
    return out;
  }
  int64_t vocab_size() const override { return 256; }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return -1; }
};

}  // namespace

std::unique_ptr<Tokenizer> ByteTokenizer() { return std::make_unique<Bytes>(); }

}  // namespace slim
