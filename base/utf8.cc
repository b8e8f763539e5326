#include "base/utf8.h"

namespace slim {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// The length of the sequence `lead` starts; 0 for a byte that cannot start one.
int SequenceLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;  // continuation bytes, C0/C1 (overlong) and F5..FF (beyond U+10FFFF)
}

// Whether `byte` may follow `pending` (a lead byte and valid continuations): the second byte's
// range depends on the lead, excluding overlong forms, surrogates and code points past U+10FFFF.
bool Continues(const std::string& pending, uint8_t byte) {
  if (byte < 0x80 || byte > 0xBF) return false;
  if (pending.size() != 1) return true;
  switch (static_cast<uint8_t>(pending[0])) {
    case 0xE0: return byte >= 0xA0;
    case 0xED: return byte <= 0x9F;
    case 0xF0: return byte >= 0x90;
    case 0xF4: return byte <= 0x8F;
    default: return true;
  }
}

}  // namespace

std::string Utf8Assembler::Push(uint8_t byte) {
  if (!pending_.empty()) {
    if (Continues(pending_, byte)) {
      pending_ += static_cast<char>(byte);
      if (static_cast<int>(pending_.size()) < needed_) return "";
      std::string done;
      done.swap(pending_);
      return done;
    }
    // The held sequence ends here, cut short: one replacement, then this byte afresh.
    pending_.clear();
    return kReplacement + Push(byte);
  }
  needed_ = SequenceLength(byte);
  if (needed_ == 1) return std::string(1, static_cast<char>(byte));
  if (needed_ == 0) return kReplacement;
  pending_ = std::string(1, static_cast<char>(byte));
  return "";
}

std::string Utf8Assembler::Finish() {
  if (pending_.empty()) return "";
  pending_.clear();
  return kReplacement;
}

}  // namespace slim
