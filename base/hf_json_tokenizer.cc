// Hugging Face tokenizer.json with a BPE model, following the Rust `tokenizers` library's
// pipeline: added tokens are split out of the raw text first (exact, leftmost-longest match);
// every other segment is normalized, pre-tokenized (regular expressions on PCRE2 with Unicode
// properties), mapped byte-to-unicode for byte-level models, and each piece merged by rank.
// What the library supports but slim does not is refused by name at load time, never ignored.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <queue>
#include <unordered_map>

#include "base/errors.h"
#include "base/json.h"
#include "base/tokenizer_impl.h"

namespace slim::tokenizer_impl {
namespace {

[[noreturn]] void Invalid(const std::string& what, const std::string& message) {
  throw EngineError(ErrorCode::kInvalidArgument, what + ": " + message);
}

// Length of the UTF-8 sequence starting at s[i], or 0 if it is not a valid one (the byte then
// stands for itself).
size_t Utf8Length(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = 0;
  unsigned cp = 0;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3F);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
    return 0;
  }
  return n;
}

std::string HexByte(char c) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02X", static_cast<unsigned char>(c));
  return buf;
}

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to code points
// from 256 up, so every byte string becomes a printable string with one character per byte.
struct ByteMap {
  std::string to_unicode[256];                 // UTF-8 of the character for each byte
  std::unordered_map<std::string, unsigned char> to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const unsigned cp = printable ? static_cast<unsigned>(b) : 256u + n++;
      AppendUtf8(cp, &to_unicode[b]);
      to_byte[to_unicode[b]] = static_cast<unsigned char>(b);
    }
  }
};

const ByteMap& Bytes() {
  static const ByteMap* map = new ByteMap();  // never destroyed (no non-trivial static destructors)
  return *map;
}

// A compiled PCRE2 expression. Matching allocates its own match data, so one Regex serves many
// threads. Limits bound the work a hostile expression can make one match do.
class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& what) : pattern_(pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    // MATCH_INVALID_UTF: text need not be valid UTF-8; invalid bytes match nothing and end up
    // between matches (where Split keeps them as pieces of their own).
    // (PCRE2_LITERAL admits no UCP; a literal needs none.)
    uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error, &offset,
                          nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      Invalid(what, "regular expression '" + pattern + "' is not valid at offset " + std::to_string(offset) + ": " +
                        reinterpret_cast<const char*>(message));
    }
    // JIT where the platform has it (amd64, arm64); the interpreter otherwise.
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
    context_ = pcre2_match_context_create(nullptr);
    pcre2_set_match_limit(context_, 10'000'000);
    pcre2_set_depth_limit(context_, 100'000);
  }
  ~Regex() {
    pcre2_match_context_free(context_);
    pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The [begin, end) byte ranges of every non-overlapping match in `text`, left to right.
  std::vector<std::pair<size_t, size_t>> Matches(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t start = 0;
    while (start <= text.size()) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
      int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), start, 0, data, context_)
                    : pcre2_match(code_, subject, text.size(), start, 0, data, context_);
      // JIT code runs on a small fixed stack; the interpreter, on the heap, takes what it outgrows.
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) rc = pcre2_match(code_, subject, text.size(), start, 0, data, context_);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(data);
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof(message));
        throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: regular expression '" + pattern_ +
                                                           "' failed at byte " + std::to_string(start) + ": " +
                                                           reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data);
      const size_t b = ov[0], e = ov[1];
      if (e > b) {
        out.emplace_back(b, e);
        start = e;
      } else {
        // An empty match contributes nothing (as in the Rust library); step over one character.
        if (b >= text.size()) break;
        const size_t n = Utf8Length(text, b);
        start = b + (n == 0 ? 1 : n);
      }
    }
    pcre2_match_data_free(data);
    return out;
  }

 private:
  std::string pattern_;
  pcre2_code* code_ = nullptr;
  pcre2_match_context* context_ = nullptr;
  bool jit_ = false;
};

// A piece of text on its way through the pipeline, with its byte offset in the original text
// (Metaspace's "first" scheme prepends only to the piece that starts the text).
struct Piece {
  std::string text;
  size_t offset = 0;
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// Splits `piece` at the matches of `regex` as the Rust library's Split with `behavior`.
void SplitPiece(const Piece& piece, const Regex& regex, SplitBehavior behavior, std::vector<Piece>* out) {
  const auto matches = regex.Matches(piece.text);
  // (begin, end, is_match) covering the whole piece.
  std::vector<std::tuple<size_t, size_t, bool>> spans;
  size_t at = 0;
  for (const auto& [b, e] : matches) {
    if (b > at) spans.emplace_back(at, b, false);
    spans.emplace_back(b, e, true);
    at = e;
  }
  if (at < piece.text.size()) spans.emplace_back(at, piece.text.size(), false);
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto [b, e, match] = spans[i];
    switch (behavior) {
      case SplitBehavior::kIsolated:
        ranges.emplace_back(b, e);
        break;
      case SplitBehavior::kRemoved:
        if (!match) ranges.emplace_back(b, e);
        break;
      case SplitBehavior::kMergedWithPrevious:
        if (match && !ranges.empty() && std::get<2>(spans[i - 1]) == false) {
          ranges.back().second = e;
        } else {
          ranges.emplace_back(b, e);
        }
        break;
      case SplitBehavior::kMergedWithNext:
        if (!match && i > 0 && std::get<2>(spans[i - 1])) {
          ranges.back().second = e;
        } else {
          ranges.emplace_back(b, e);
        }
        break;
    }
  }
  for (const auto& [b, e] : ranges) out->push_back({piece.text.substr(b, e - b), piece.offset + b});
}

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s->find(from, at)) != std::string::npos; at = hit + from.size()) {
    out.append(*s, at, hit - at);
    out += to;
  }
  out.append(*s, at, std::string::npos);
  *s = std::move(out);
}

// Ids are dense in real vocabularies (the largest slim imports has 262,144); the bound keeps a
// hostile file naming one huge id from allocating a table that size.
constexpr int64_t kMaxIds = 1 << 20;

// Reading JSON members with errors that name the path inside the file.
const Json* Member(const Json& object, const std::string& key) {
  if (object.kind != Json::kObject) return nullptr;
  const auto it = object.members.find(key);
  return it == object.members.end() || it->second.kind == Json::kNull ? nullptr : &it->second;
}
std::string StringMember(const std::string& what, const Json& object, const std::string& key, const std::string& at,
                         const std::string& fallback = "") {
  const Json* v = Member(object, key);
  if (v == nullptr) return fallback;
  if (v->kind != Json::kString) Invalid(what, at + "." + key + " must be a string, got " + DescribeJson(*v));
  return v->text;
}
bool BoolMember(const std::string& what, const Json& object, const std::string& key, const std::string& at,
                bool fallback) {
  const Json* v = Member(object, key);
  if (v == nullptr) return fallback;
  if (v->kind != Json::kBool) Invalid(what, at + "." + key + " must be true or false, got " + DescribeJson(*v));
  return v->boolean;
}
int64_t IdMember(const std::string& what, const Json& object, const std::string& key, const std::string& at) {
  const Json* v = Member(object, key);
  if (v == nullptr || v->kind != Json::kNumber || v->number < 0 || v->number >= kMaxIds ||
      v->number != static_cast<double>(static_cast<int64_t>(v->number))) {
    Invalid(what, at + "." + key + " must be an id in [0, " + std::to_string(kMaxIds) + "), got " +
                      (v ? DescribeJson(*v) : "nothing"));
  }
  return static_cast<int64_t>(v->number);
}
const std::string& TypeOf(const std::string& what, const Json& object, const std::string& at) {
  const Json* t = Member(object, "type");
  if (t == nullptr || t->kind != Json::kString) Invalid(what, at + " has no \"type\"");
  return t->text;
}
// A Split/Replace "pattern": {"Regex": "..."} or {"String": "..."}.
std::unique_ptr<Regex> PatternMember(const std::string& what, const Json& object, const std::string& at) {
  const Json* p = Member(object, "pattern");
  if (p == nullptr || p->kind != Json::kObject) Invalid(what, at + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
  if (const Json* r = Member(*p, "Regex"); r != nullptr && r->kind == Json::kString) {
    return std::make_unique<Regex>(r->text, false, what);
  }
  if (const Json* s = Member(*p, "String"); s != nullptr && s->kind == Json::kString) {
    return std::make_unique<Regex>(s->text, true, what);
  }
  Invalid(what, at + ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
}
std::string StringPattern(const std::string& what, const Json& object, const std::string& at) {
  const Json* p = Member(object, "pattern");
  const Json* s = p == nullptr ? nullptr : Member(*p, "String");
  if (s == nullptr || s->kind != Json::kString) {
    Invalid(what, at + ".pattern: only {\"String\": ...} patterns are supported here");
  }
  return s->text;
}

struct NormalizerStep {
  enum Kind { kPrepend, kReplace, kUnicode } kind;
  std::string a, b;  // prepend: a; replace: a → b; unicode: a = NFC, NFD, NFKC or NFKD
};

// `text` in Unicode normalization form `form` (ICU, the same Unicode data LibTorch's ICU has).
// Only valid UTF-8 runs are normalized; invalid bytes stay where they are, as the rest of the
// pipeline keeps them.
std::string UnicodeNormalize(const std::string& text, const std::string& form) {
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* n = form == "NFC"    ? unorm2_getNFCInstance(&status)
                          : form == "NFD"  ? unorm2_getNFDInstance(&status)
                          : form == "NFKC" ? unorm2_getNFKCInstance(&status)
                                           : unorm2_getNFKDInstance(&status);
  if (U_FAILURE(status)) throw EngineError(ErrorCode::kInternal, "tokenizer: ICU has no " + form + " normalizer");
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && Utf8Length(text, j) != 0) j += Utf8Length(text, j);
    if (j > i) {
      status = U_ZERO_ERROR;
      int32_t units = 0;
      u_strFromUTF8(nullptr, 0, &units, text.data() + i, static_cast<int32_t>(j - i), &status);
      std::u16string in(units, u'\0');
      status = U_ZERO_ERROR;
      u_strFromUTF8(reinterpret_cast<UChar*>(in.data()), units, nullptr, text.data() + i, static_cast<int32_t>(j - i),
                    &status);
      std::u16string norm(static_cast<size_t>(units) * 3 + 16, u'\0');  // NFKD grows at most ×18; retried below
      status = U_ZERO_ERROR;
      int32_t length = unorm2_normalize(n, reinterpret_cast<const UChar*>(in.data()), units,
                                        reinterpret_cast<UChar*>(norm.data()), static_cast<int32_t>(norm.size()), &status);
      if (status == U_BUFFER_OVERFLOW_ERROR) {
        norm.assign(static_cast<size_t>(length), u'\0');
        status = U_ZERO_ERROR;
        length = unorm2_normalize(n, reinterpret_cast<const UChar*>(in.data()), units,
                                  reinterpret_cast<UChar*>(norm.data()), length, &status);
      }
      int32_t bytes = 0;
      UErrorCode s2 = U_ZERO_ERROR;
      u_strToUTF8(nullptr, 0, &bytes, reinterpret_cast<const UChar*>(norm.data()), length, &s2);
      std::string utf8(static_cast<size_t>(bytes), '\0');
      s2 = U_ZERO_ERROR;
      u_strToUTF8(utf8.data(), bytes, nullptr, reinterpret_cast<const UChar*>(norm.data()), length, &s2);
      if (U_FAILURE(status) || U_FAILURE(s2)) throw EngineError(ErrorCode::kInternal, "tokenizer: " + form + " normalization failed");
      out += utf8;
    }
    if (j < text.size()) out += text[j++];  // an invalid byte
    i = j;
  }
  return out;
}

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  std::shared_ptr<Regex> regex;  // split; byte-level with use_regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool add_prefix_space = false;  // byte-level
  std::string replacement;        // metaspace
  std::string prepend_scheme;     // metaspace: always, first, never
  bool split = true;              // metaspace
};

struct DecoderStep {
  enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;   // replace: a → b; strip: a = content; metaspace: a = replacement
  int64_t start = 0, stop = 0;  // strip
  bool strip_first_space = false;  // metaspace
};

// GPT-2's pre-tokenizer expression (ByteLevel with use_regex).
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class HfJsonTokenizer : public Tokenizer {
 public:
  HfJsonTokenizer(const Json& root, const std::string& what) {
    if (root.kind != Json::kObject) Invalid(what, "not a JSON object");
    const Json* model = Member(root, "model");
    if (model == nullptr || model->kind != Json::kObject) Invalid(what, "has no \"model\" object");
    // Old files leave out "type" for BPE; anything else must say what it is.
    const std::string type = StringMember(what, *model, "type", "model", "BPE");
    if (type != "BPE") {
      Invalid(what, "model type '" + type + "' is not supported (supported: BPE; SentencePiece models as tokenizer.model)");
    }
    ReadModel(*model, what);
    ReadAddedTokens(root, what);
    if (const Json* n = Member(root, "normalizer")) ReadNormalizer(*n, what, "normalizer");
    if (const Json* p = Member(root, "pre_tokenizer")) ReadPreTokenizer(*p, what, "pre_tokenizer");
    if (const Json* d = Member(root, "decoder")) ReadDecoder(*d, what, "decoder");
    for (const auto& s : pre_tokenizer_) byte_level_ |= s.kind == PreTokenizerStep::kByteLevel;
    // Every byte needs a token in a byte-level vocabulary, or some text cannot be encoded.
    if (byte_level_) {
      for (int b = 0; b < 256; ++b) {
        if (!vocab_.count(Bytes().to_unicode[b])) {
          Invalid(what, "byte-level vocabulary has no token for byte " + std::to_string(b) + " ('" +
                            Bytes().to_unicode[b] + "')");
        }
      }
    }
    ReadSpecialIds(root);
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    // Per-call cache of pieces already merged: text repeats words, and a cache local to the
    // call keeps Encode free of shared mutable state.
    std::unordered_map<std::string, std::vector<int32_t>> cache;
    size_t segment_start = 0;
    auto flush = [&](size_t end) {
      if (end > segment_start) EncodeSegment(text.substr(segment_start, end - segment_start), segment_start, &cache, &ids);
    };
    for (size_t i = 0; i < text.size();) {
      const auto candidates = added_by_first_byte_.find(static_cast<unsigned char>(text[i]));
      int32_t hit = -1;
      size_t hit_len = 0;
      if (candidates != added_by_first_byte_.end()) {
        for (const auto& [content, id] : candidates->second) {  // longest first
          if (text.compare(i, content.size(), content) == 0) {
            hit = id;
            hit_len = content.size();
            break;
          }
        }
      }
      if (hit < 0) {
        ++i;
        continue;
      }
      flush(i);
      ids.push_back(hit);
      i += hit_len;
      segment_start = i;
    }
    flush(text.size());
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t id = ids[i];
      if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size())) {
        throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: id " + std::to_string(id) + " at position " +
                                                           std::to_string(i) + " is outside [0, " +
                                                           std::to_string(id_to_token_.size()) + ")");
      }
      if (!has_token_[id]) {
        throw EngineError(ErrorCode::kInvalidArgument, "tokenizer: id " + std::to_string(id) + " at position " +
                                                           std::to_string(i) + " names no token");
      }
      tokens.push_back(id_to_token_[id]);
    }
    for (const DecoderStep& step : decoder_) tokens = ApplyDecoder(step, std::move(tokens));
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }

 private:
  void AddToken(const std::string& what, const std::string& token, int64_t id, const std::string& at) {
    if (id < 0 || id >= kMaxIds) Invalid(what, at + ": id " + std::to_string(id) + " is outside [0, " + std::to_string(kMaxIds) + ")");
    if (static_cast<size_t>(id) >= id_to_token_.size()) {
      id_to_token_.resize(id + 1);
      has_token_.resize(id + 1, false);
    }
    if (has_token_[id] && id_to_token_[id] != token) {
      Invalid(what, at + ": id " + std::to_string(id) + " is given to both '" + id_to_token_[id] + "' and '" + token + "'");
    }
    id_to_token_[id] = token;
    has_token_[id] = true;
  }

  void ReadModel(const Json& model, const std::string& what) {
    const Json* vocab = Member(model, "vocab");
    if (vocab == nullptr || vocab->kind != Json::kObject) Invalid(what, "model.vocab must be an object of token → id");
    for (const auto& [token, id] : vocab->members) {
      if (id.kind != Json::kNumber || !(std::abs(id.number) < 1e15) ||
          id.number != static_cast<double>(static_cast<int64_t>(id.number))) {
        Invalid(what, "model.vocab['" + token + "'] must be an integer id, got " + DescribeJson(id));
      }
      AddToken(what, token, static_cast<int64_t>(id.number), "model.vocab['" + token + "']");
      vocab_[token] = static_cast<int32_t>(id.number);
    }
    if (vocab_.empty()) Invalid(what, "model.vocab is empty");
    if (const Json* d = Member(model, "dropout"); d != nullptr && !(d->kind == Json::kNumber && d->number == 0)) {
      Invalid(what, "model.dropout is not supported (encoding must be deterministic)");
    }
    if (!StringMember(what, model, "continuing_subword_prefix", "model").empty() ||
        !StringMember(what, model, "end_of_word_suffix", "model").empty()) {
      Invalid(what, "model.continuing_subword_prefix / end_of_word_suffix are not supported");
    }
    byte_fallback_ = BoolMember(what, model, "byte_fallback", "model", false);
    ignore_merges_ = BoolMember(what, model, "ignore_merges", "model", false);
    fuse_unk_ = BoolMember(what, model, "fuse_unk", "model", false);
    if (const Json* unk = Member(model, "unk_token")) {
      if (unk->kind != Json::kString) Invalid(what, "model.unk_token must be a string");
      const auto it = vocab_.find(unk->text);
      if (it == vocab_.end()) Invalid(what, "model.unk_token '" + unk->text + "' is not in model.vocab");
      unk_ = it->second;
    }
    const Json* merges = Member(model, "merges");
    if (merges != nullptr && merges->kind != Json::kArray) Invalid(what, "model.merges must be an array");
    if (merges == nullptr) return;
    merges_.reserve(merges->items.size());
    for (size_t rank = 0; rank < merges->items.size(); ++rank) {
      const Json& m = merges->items[rank];
      const std::string at = "model.merges[" + std::to_string(rank) + "]";
      std::string left, right;
      // Two formats: "a b" (tokenizers < 0.20) and ["a", "b"] (newer; tokens may hold spaces).
      if (m.kind == Json::kString) {
        const size_t space = m.text.find(' ');
        if (space == std::string::npos || m.text.find(' ', space + 1) != std::string::npos) {
          Invalid(what, at + " '" + m.text + "' must be two tokens separated by one space");
        }
        left = m.text.substr(0, space);
        right = m.text.substr(space + 1);
      } else if (m.kind == Json::kArray && m.items.size() == 2 && m.items[0].kind == Json::kString &&
                 m.items[1].kind == Json::kString) {
        left = m.items[0].text;
        right = m.items[1].text;
      } else {
        Invalid(what, at + " must be \"a b\" or [\"a\", \"b\"], got " + DescribeJson(m));
      }
      const auto a = vocab_.find(left), b = vocab_.find(right), ab = vocab_.find(left + right);
      if (a == vocab_.end()) Invalid(what, at + ": '" + left + "' is not in model.vocab");
      if (b == vocab_.end()) Invalid(what, at + ": '" + right + "' is not in model.vocab");
      if (ab == vocab_.end()) Invalid(what, at + ": the merged token '" + left + right + "' is not in model.vocab");
      // A pair listed twice keeps its last rank, as the Rust library's map built in order does.
      merges_[PairKey(a->second, b->second)] = Merge{static_cast<int32_t>(rank), ab->second};
    }
  }

  void ReadAddedTokens(const Json& root, const std::string& what) {
    const Json* added = Member(root, "added_tokens");
    if (added == nullptr) return;
    if (added->kind != Json::kArray) Invalid(what, "added_tokens must be an array");
    for (size_t i = 0; i < added->items.size(); ++i) {
      const Json& t = added->items[i];
      const std::string at = "added_tokens[" + std::to_string(i) + "]";
      const std::string content = StringMember(what, t, "content", at);
      if (content.empty()) Invalid(what, at + ".content must be a non-empty string");
      const int64_t id = IdMember(what, t, "id", at);
      for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
        if (BoolMember(what, t, flag, at, false)) {
          Invalid(what, at + " ('" + content + "'): " + flag + " is not supported (added tokens match exactly)");
        }
      }
      AddToken(what, content, id, at);
      added_[content] = static_cast<int32_t>(id);
    }
    for (const auto& [content, id] : added_) {
      added_by_first_byte_[static_cast<unsigned char>(content[0])].emplace_back(content, id);
    }
    for (auto& [first, list] : added_by_first_byte_) {
      std::stable_sort(list.begin(), list.end(),
                       [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
    }
  }

  void ReadNormalizer(const Json& n, const std::string& what, const std::string& at) {
    const std::string& type = TypeOf(what, n, at);
    if (type == "Sequence") {
      const Json* list = Member(n, "normalizers");
      if (list == nullptr || list->kind != Json::kArray) Invalid(what, at + ".normalizers must be an array");
      for (size_t i = 0; i < list->items.size(); ++i) {
        ReadNormalizer(list->items[i], what, at + ".normalizers[" + std::to_string(i) + "]");
      }
    } else if (type == "Prepend") {
      normalizer_.push_back({NormalizerStep::kPrepend, StringMember(what, n, "prepend", at), ""});
    } else if (type == "Replace") {
      normalizer_.push_back({NormalizerStep::kReplace, StringPattern(what, n, at), StringMember(what, n, "content", at)});
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      normalizer_.push_back({NormalizerStep::kUnicode, type, ""});
    } else {
      Invalid(what, at + ": normalizer type '" + type +
                        "' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD)");
    }
  }

  void ReadPreTokenizer(const Json& p, const std::string& what, const std::string& at) {
    const std::string& type = TypeOf(what, p, at);
    PreTokenizerStep step;
    if (type == "Sequence") {
      const Json* list = Member(p, "pretokenizers");
      if (list == nullptr || list->kind != Json::kArray) Invalid(what, at + ".pretokenizers must be an array");
      for (size_t i = 0; i < list->items.size(); ++i) {
        ReadPreTokenizer(list->items[i], what, at + ".pretokenizers[" + std::to_string(i) + "]");
      }
      return;
    } else if (type == "Split") {
      step.kind = PreTokenizerStep::kSplit;
      step.regex = PatternMember(what, p, at);
      const std::string behavior = StringMember(what, p, "behavior", at, "Isolated");
      if (behavior == "Isolated") {
        step.behavior = SplitBehavior::kIsolated;
      } else if (behavior == "Removed") {
        step.behavior = SplitBehavior::kRemoved;
      } else if (behavior == "MergedWithPrevious") {
        step.behavior = SplitBehavior::kMergedWithPrevious;
      } else if (behavior == "MergedWithNext") {
        step.behavior = SplitBehavior::kMergedWithNext;
      } else {
        Invalid(what, at + ".behavior '" + behavior +
                          "' is not supported (supported: Isolated, Removed, MergedWithPrevious, MergedWithNext)");
      }
      if (BoolMember(what, p, "invert", at, false)) Invalid(what, at + ".invert is not supported");
    } else if (type == "ByteLevel") {
      step.kind = PreTokenizerStep::kByteLevel;
      step.add_prefix_space = BoolMember(what, p, "add_prefix_space", at, true);
      if (BoolMember(what, p, "use_regex", at, true)) step.regex = std::make_shared<Regex>(kGpt2Pattern, false, what);
    } else if (type == "Metaspace") {
      step.kind = PreTokenizerStep::kMetaspace;
      step.replacement = StringMember(what, p, "replacement", at, "\xE2\x96\x81");  // ▁
      if (step.replacement.empty()) Invalid(what, at + ".replacement must not be empty");
      // Older files say add_prefix_space; newer ones prepend_scheme.
      step.prepend_scheme = StringMember(what, p, "prepend_scheme", at,
                                         BoolMember(what, p, "add_prefix_space", at, true) ? "always" : "never");
      if (step.prepend_scheme != "always" && step.prepend_scheme != "first" && step.prepend_scheme != "never") {
        Invalid(what, at + ".prepend_scheme '" + step.prepend_scheme + "' is not always, first or never");
      }
      step.split = BoolMember(what, p, "split", at, true);
      if (step.split) step.regex = std::make_shared<Regex>(step.replacement, true, what);
    } else {
      Invalid(what, at + ": pre-tokenizer type '" + type +
                        "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace)");
    }
    pre_tokenizer_.push_back(std::move(step));
  }

  void ReadDecoder(const Json& d, const std::string& what, const std::string& at) {
    const std::string& type = TypeOf(what, d, at);
    DecoderStep step;
    if (type == "Sequence") {
      const Json* list = Member(d, "decoders");
      if (list == nullptr || list->kind != Json::kArray) Invalid(what, at + ".decoders must be an array");
      for (size_t i = 0; i < list->items.size(); ++i) {
        ReadDecoder(list->items[i], what, at + ".decoders[" + std::to_string(i) + "]");
      }
      return;
    } else if (type == "ByteLevel") {
      step.kind = DecoderStep::kByteLevel;
    } else if (type == "Replace") {
      step.kind = DecoderStep::kReplace;
      step.a = StringPattern(what, d, at);
      step.b = StringMember(what, d, "content", at);
    } else if (type == "ByteFallback") {
      step.kind = DecoderStep::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = DecoderStep::kFuse;
    } else if (type == "Strip") {
      step.kind = DecoderStep::kStrip;
      step.a = StringMember(what, d, "content", at, " ");
      const Json* start = Member(d, "start");
      const Json* stop = Member(d, "stop");
      step.start = start && start->kind == Json::kNumber ? static_cast<int64_t>(start->number) : 0;
      step.stop = stop && stop->kind == Json::kNumber ? static_cast<int64_t>(stop->number) : 0;
    } else if (type == "Metaspace") {
      step.kind = DecoderStep::kMetaspace;
      step.a = StringMember(what, d, "replacement", at, "\xE2\x96\x81");
      const std::string scheme = StringMember(what, d, "prepend_scheme", at,
                                              BoolMember(what, d, "add_prefix_space", at, true) ? "always" : "never");
      step.strip_first_space = scheme != "never";
    } else {
      Invalid(what, at + ": decoder type '" + type +
                        "' is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                        "Metaspace)");
    }
    decoder_.push_back(std::move(step));
  }

  // BOS: the special token a TemplateProcessing post-processor puts first (Llama 2 and 3 do);
  // otherwise, as EOS, the conventional names of the families slim imports.
  void ReadSpecialIds(const Json& root) {
    auto named = [&](std::initializer_list<const char*> names) -> int32_t {
      for (const char* name : names) {
        if (const auto it = added_.find(name); it != added_.end()) return it->second;
      }
      return -1;
    };
    if (const Json* post = Member(root, "post_processor")) {
      const Json* single = Member(*post, "single");
      if (Member(*post, "type") && Member(*post, "type")->text == "TemplateProcessing" && single != nullptr &&
          single->kind == Json::kArray && !single->items.empty()) {
        if (const Json* special = Member(single->items[0], "SpecialToken")) {
          if (const Json* id = Member(*special, "id"); id != nullptr && id->kind == Json::kString) {
            if (const auto it = added_.find(id->text); it != added_.end()) bos_ = it->second;
          }
        }
      }
    }
    if (bos_ < 0) bos_ = named({"<|begin_of_text|>", "<s>"});
    eos_ = named({"<|end_of_text|>", "<|endoftext|>", "</s>"});
  }

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void EncodeSegment(std::string_view segment, size_t offset,
                     std::unordered_map<std::string, std::vector<int32_t>>* cache, std::vector<int32_t>* ids) const {
    std::string text(segment);
    for (const NormalizerStep& n : normalizer_) {
      if (n.kind == NormalizerStep::kPrepend) {
        if (!text.empty()) text = n.a + text;
      } else if (n.kind == NormalizerStep::kReplace) {
        ReplaceAll(&text, n.a, n.b);
      } else {
        text = UnicodeNormalize(text, n.a);
      }
    }
    std::vector<Piece> pieces = {{std::move(text), offset}};
    for (const PreTokenizerStep& step : pre_tokenizer_) {
      std::vector<Piece> next;
      for (Piece& piece : pieces) {
        switch (step.kind) {
          case PreTokenizerStep::kSplit:
            SplitPiece(piece, *step.regex, step.behavior, &next);
            break;
          case PreTokenizerStep::kByteLevel:
            if (step.add_prefix_space && piece.text.rfind(' ', 0) != 0) piece.text.insert(0, " ");
            if (step.regex) {
              SplitPiece(piece, *step.regex, SplitBehavior::kIsolated, &next);
            } else {
              next.push_back(std::move(piece));
            }
            break;
          case PreTokenizerStep::kMetaspace: {
            ReplaceAll(&piece.text, " ", step.replacement);
            const bool prepend = step.prepend_scheme == "always" || (step.prepend_scheme == "first" && piece.offset == 0);
            if (prepend && piece.text.rfind(step.replacement, 0) != 0) piece.text.insert(0, step.replacement);
            if (step.regex) {
              SplitPiece(piece, *step.regex, SplitBehavior::kMergedWithNext, &next);
            } else {
              next.push_back(std::move(piece));
            }
            break;
          }
        }
      }
      pieces = std::move(next);
    }
    for (Piece& piece : pieces) {
      if (piece.text.empty()) continue;
      if (byte_level_) {
        std::string mapped;
        for (unsigned char c : piece.text) mapped += Bytes().to_unicode[c];
        piece.text = std::move(mapped);
      }
      if (const auto hit = cache->find(piece.text); hit != cache->end()) {
        ids->insert(ids->end(), hit->second.begin(), hit->second.end());
        continue;
      }
      std::vector<int32_t> word = EncodeWord(piece.text);
      ids->insert(ids->end(), word.begin(), word.end());
      if (cache->size() < 100'000) cache->emplace(std::move(piece.text), std::move(word));
    }
  }

  // One pre-tokenized piece: characters (byte fallback, unknown token) merged by rank. The merge
  // order is the Rust library's: always the pair of lowest rank, the leftmost among equals.
  std::vector<int32_t> EncodeWord(const std::string& word) const {
    if (ignore_merges_) {
      if (const auto it = vocab_.find(word); it != vocab_.end()) return {it->second};
    }
    struct Symbol {
      int32_t id;
      int32_t prev, next;
      bool live;
    };
    std::vector<Symbol> symbols;
    for (size_t i = 0; i < word.size();) {
      size_t n = Utf8Length(word, i);
      const bool valid = n != 0;
      if (!valid) n = 1;
      const std::string ch = word.substr(i, n);
      const auto it = valid ? vocab_.find(ch) : vocab_.end();
      auto push = [&](int32_t id) {
        symbols.push_back({id, static_cast<int32_t>(symbols.size()) - 1, static_cast<int32_t>(symbols.size()) + 1, true});
      };
      if (it != vocab_.end()) {
        push(it->second);
      } else {
        std::vector<int32_t> bytes;
        if (byte_fallback_) {
          static const char kHex[] = "0123456789ABCDEF";
          for (unsigned char c : ch) {
            const std::string name = std::string("<0x") + kHex[c >> 4] + kHex[c & 15] + ">";
            const auto b = vocab_.find(name);
            if (b == vocab_.end()) {
              bytes.clear();
              break;
            }
            bytes.push_back(b->second);
          }
        }
        if (!bytes.empty()) {
          for (int32_t id : bytes) push(id);
        } else if (unk_ >= 0) {
          if (!(fuse_unk_ && !symbols.empty() && symbols.back().id == unk_)) push(unk_);
        } else {
          throw EngineError(ErrorCode::kInvalidArgument,
                            "tokenizer: the vocabulary has no token for '" + (valid ? ch : HexByte(ch[0])) +
                                "' (and no byte fallback or unknown token)");
        }
      }
      i += n;
    }
    if (symbols.empty()) return {};
    symbols.back().next = -1;
    struct Candidate {
      int32_t rank, pos, new_id;
      bool operator<(const Candidate& o) const {  // priority_queue pops the largest: invert
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate> queue;
    auto consider = [&](int32_t left) {
      if (left < 0 || symbols[left].next < 0) return;
      const auto m = merges_.find(PairKey(symbols[left].id, symbols[symbols[left].next].id));
      if (m != merges_.end()) queue.push({m->second.rank, left, m->second.new_id});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& left = symbols[c.pos];
      if (!left.live || left.next < 0) continue;
      // A stale entry: one side was merged into something else since it was queued.
      const auto m = merges_.find(PairKey(left.id, symbols[left.next].id));
      if (m == merges_.end() || m->second.new_id != c.new_id) continue;
      Symbol& right = symbols[left.next];
      right.live = false;
      left.id = c.new_id;
      left.next = right.next;
      if (left.next >= 0) symbols[left.next].prev = c.pos;
      consider(left.prev);
      consider(c.pos);
    }
    std::vector<int32_t> out;
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
    return out;
  }

  std::vector<std::string> ApplyDecoder(const DecoderStep& step, std::vector<std::string> tokens) const {
    switch (step.kind) {
      case DecoderStep::kByteLevel:
        for (std::string& t : tokens) {
          std::string bytes;
          for (size_t i = 0; i < t.size();) {
            size_t n = Utf8Length(t, i);
            if (n == 0) n = 1;
            const auto b = Bytes().to_byte.find(t.substr(i, n));
            if (b != Bytes().to_byte.end()) {
              bytes += static_cast<char>(b->second);
            } else {
              bytes.append(t, i, n);  // not a byte-level character (an added token's): as is
            }
            i += n;
          }
          t = std::move(bytes);
        }
        break;
      case DecoderStep::kReplace:
        for (std::string& t : tokens) ReplaceAll(&t, step.a, step.b);
        break;
      case DecoderStep::kByteFallback:
        for (std::string& t : tokens) {
          if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
              std::isxdigit(static_cast<unsigned char>(t[4]))) {
            t = std::string(1, static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
          }
        }
        break;
      case DecoderStep::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case DecoderStep::kStrip:
        for (std::string& t : tokens) {
          for (int64_t k = 0; k < step.start && t.rfind(step.a, 0) == 0; ++k) t.erase(0, step.a.size());
          for (int64_t k = 0; k < step.stop && t.size() >= step.a.size() &&
                              t.compare(t.size() - step.a.size(), step.a.size(), step.a) == 0;
               ++k) {
            t.erase(t.size() - step.a.size());
          }
        }
        break;
      case DecoderStep::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          ReplaceAll(&tokens[i], step.a, " ");
          if (i == 0 && step.strip_first_space && tokens[i].rfind(' ', 0) == 0) tokens[i].erase(0, 1);
        }
        break;
    }
    return tokens;
  }

  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // model vocabulary and added tokens
  std::vector<bool> has_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::map<std::string, int32_t> added_;
  std::unordered_map<unsigned char, std::vector<std::pair<std::string, int32_t>>> added_by_first_byte_;
  std::vector<NormalizerStep> normalizer_;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  std::vector<DecoderStep> decoder_;
  bool byte_level_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  int32_t unk_ = -1;
  int32_t bos_ = -1, eos_ = -1;
};

}  // namespace

std::unique_ptr<Tokenizer> LoadHfJson(const std::string& json, const std::string& what) {
  Json root;
  try {
    root = ParseJson(json);
  } catch (const EngineError& e) {
    Invalid(what, std::string("malformed JSON: ") + e.what());
  }
  return std::make_unique<HfJsonTokenizer>(root, what);
}

}  // namespace slim::tokenizer_impl
