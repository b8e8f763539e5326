// base/tokenizer.h on small hand-written tokenizer files, where every expected id can be worked
// out by hand. tokenizer_reference_test.sh compares real vocabularies with other implementations.
#include "base/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/errors.h"
#include "base/json.h"
#include "base/text_tokens.h"

namespace slim {
namespace {

using Ids = std::vector<int32_t>;

std::unique_ptr<Tokenizer> FromJson(const std::string& json) {
  return LoadTokenizer({TokenizerKind::kHfJson, json}, "tokenizer.json");
}

// The message of the EngineError that `f` throws ("" if none).
template <typename F>
std::string ErrorOf(F f) {
  try {
    f();
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "";
}

// A character-level BPE (no pre-tokenizer): vocab a b c ab bc abc, merges as given.
std::string CharBpe(const std::string& merges, const std::string& extra_model = "",
                    const std::string& extra_root = "") {
  return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}, "merges": )" +
         merges + extra_model + "}" + extra_root + "}";
}

TEST(HfJsonTokenizer, MergesApplyByRankNotPosition) {
  // "b c" ranks before "a b": abc → a + bc, although a b comes first in the text.
  EXPECT_EQ(FromJson(CharBpe(R"(["b c", "a b"])"))->Encode("abc"), (Ids{0, 4}));
  EXPECT_EQ(FromJson(CharBpe(R"(["a b", "b c"])"))->Encode("abc"), (Ids{3, 2}));
  // A later merge builds on an earlier one's result.
  EXPECT_EQ(FromJson(CharBpe(R"(["a b", "ab c"])"))->Encode("abcab"), (Ids{5, 3}));
  // No merge: characters.
  EXPECT_EQ(FromJson(CharBpe("[]"))->Encode("cab"), (Ids{2, 0, 1}));
}

TEST(HfJsonTokenizer, BothMergeFormatsReadTheSame) {
  const auto strings = FromJson(CharBpe(R"(["b c", "a bc"])"));
  const auto arrays = FromJson(CharBpe(R"([["b", "c"], ["a", "bc"]])"));
  for (const std::string text : {"abc", "bcabca", "cba", "abcabcabc"}) {
    EXPECT_EQ(strings->Encode(text), arrays->Encode(text)) << text;
  }
  EXPECT_EQ(arrays->Encode("abc"), (Ids{5}));
}

TEST(HfJsonTokenizer, EqualRanksMergeLeftmostFirst) {
  const auto t = FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "aa": 1}, "merges": ["a a"]}})");
  EXPECT_EQ(t->Encode("aaa"), (Ids{1, 0}));
  EXPECT_EQ(t->Encode("aaaaa"), (Ids{1, 1, 0}));
}

TEST(HfJsonTokenizer, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  // "abc" is in the vocabulary but no merge reaches it from a + bc.
  const std::string merges = R"(["b c"])";
  EXPECT_EQ(FromJson(CharBpe(merges))->Encode("abc"), (Ids{0, 4}));
  EXPECT_EQ(FromJson(CharBpe(merges, R"(, "ignore_merges": true)"))->Encode("abc"), (Ids{5}));
}

TEST(HfJsonTokenizer, AddedTokensAreSplitOutBeforeEverythingElse) {
  const std::string json = CharBpe(R"(["a b"])", "", R"(, "added_tokens": [
      {"id": 6, "content": "<|e", "special": true},
      {"id": 7, "content": "<|end|>", "special": true},
      {"id": 8, "content": "cc", "special": false}])");
  const auto t = FromJson(json);
  // Exact, longest match first; the text around it is merged on its own (no merge across it).
  EXPECT_EQ(t->Encode("a<|end|>b"), (Ids{0, 7, 1}));
  EXPECT_EQ(t->Encode("<|eab"), (Ids{6, 3}));
  EXPECT_EQ(t->Encode("acccb"), (Ids{0, 8, 2, 1}));
  EXPECT_EQ(t->Encode("<|end|><|end|>"), (Ids{7, 7}));
  EXPECT_EQ(t->Decode({0, 7, 1}), "a<|end|>b");
  EXPECT_EQ(t->vocab_size(), 9);
  // Characters the vocabulary lacks are refused by name (no byte fallback, no unknown token).
  EXPECT_NE(ErrorOf([&] { t->Encode("a<|x"); }).find("no token for '<'"), std::string::npos);
}

TEST(HfJsonTokenizer, SpecialIdsComeFromThePostProcessorAndConventionalNames) {
  const auto t = FromJson(CharBpe("[]", "", R"(, "added_tokens": [
      {"id": 6, "content": "<s>"}, {"id": 7, "content": "</s>"}, {"id": 8, "content": "<bos>"}],
      "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                                                  {"Sequence": {"id": "A", "type_id": 0}}]})"));
  EXPECT_EQ(t->bos_id(), 8);
  EXPECT_EQ(t->eos_id(), 7);
  const auto none = FromJson(CharBpe("[]"));
  EXPECT_EQ(none->bos_id(), -1);
  EXPECT_EQ(none->eos_id(), -1);
}

// tokenizer.json for a byte-fallback BPE in the Llama 2 form: ▁ for spaces, <0xXX> byte tokens.
std::string ByteFallbackJson(bool byte_fallback, const std::string& unk) {
  return std::string(R"({"added_tokens": [{"id": 0, "content": "<unk>"}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                   {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "byte_fallback": )") +
         (byte_fallback ? "true" : "false") + R"(, "fuse_unk": true, "unk_token": )" + unk + R"(,
      "vocab": {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "<0xFF>": 3, "▁": 4, "h": 5, "i": 6, "hi": 7, "▁hi": 8},
      "merges": ["h i", "▁ hi"]}})";
}

TEST(HfJsonTokenizer, ByteFallbackSpellsUnknownCharactersInBytes) {
  const auto t = FromJson(ByteFallbackJson(true, R"("<unk>")"));
  // "é" is U+00E9 = C3 A9; "hi" after the prepended ▁ merges to ▁hi.
  EXPECT_EQ(t->Encode("hi é"), (Ids{8, 4, 1, 2}));
  EXPECT_EQ(t->Decode({8, 4, 1, 2}), "hi é");
  // A character whose bytes lack tokens (ü = C3 BC) falls back to the unknown token.
  EXPECT_EQ(t->Encode("ü"), (Ids{4, 0}));
  // Invalid UTF-8 is bytes too.
  EXPECT_EQ(t->Encode("hi\xFF"), (Ids{8, 3}));
  EXPECT_EQ(t->Decode({8, 3}), "hi\xFF");
}

TEST(HfJsonTokenizer, UnknownCharactersWithoutByteFallback) {
  // fuse_unk: a run of unknown characters is one unknown token.
  EXPECT_EQ(FromJson(ByteFallbackJson(false, R"("<unk>")"))->Encode("hié€"), (Ids{8, 0}));
  const std::string error = ErrorOf([] { FromJson(ByteFallbackJson(false, "null"))->Encode("hié"); });
  EXPECT_NE(error.find("no token for 'é'"), std::string::npos) << error;
}

// The GPT-2 byte-to-unicode table written out again, so the test does not borrow the library's.
std::string ByteChar(int b) {
  static std::vector<std::string> table = [] {
    std::vector<int> bs;
    for (int c = '!'; c <= '~'; ++c) bs.push_back(c);
    for (int c = 0xA1; c <= 0xAC; ++c) bs.push_back(c);
    for (int c = 0xAE; c <= 0xFF; ++c) bs.push_back(c);
    std::vector<std::string> t(256);
    std::vector<bool> seen(256, false);
    for (int c : bs) seen[c] = true;
    for (int c : bs) AppendUtf8(c, &t[c]);
    int n = 0;
    for (int c = 0; c < 256; ++c) {
      if (!seen[c]) AppendUtf8(256 + n++, &t[c]);
    }
    return t;
  }();
  return table[b];
}

// A byte-level BPE: every byte (ids 0..255), then "Ġt" "he" "Ġthe" merged, the GPT-2 expression.
std::string ByteLevelJson(const std::string& pre_tokenizer) {
  std::string vocab;
  for (int b = 0; b < 256; ++b) vocab += "\"" + JsonEscape(ByteChar(b)) + "\": " + std::to_string(b) + ", ";
  vocab += "\"Ġt\": 256, \"he\": 257, \"Ġthe\": 258";
  return R"({"added_tokens": [{"id": 259, "content": "<|endoftext|>", "special": true}],
    "pre_tokenizer": )" + pre_tokenizer + R"(, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {)" + vocab + R"(}, "merges": ["Ġ t", "h e", "Ġt he"]}})";
}

TEST(HfJsonTokenizer, ByteLevelRoundTripsEveryByteString) {
  const auto t = FromJson(ByteLevelJson(R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})"));
  // "the the": the expression splits "the" and " the"; the second merges to Ġthe.
  EXPECT_EQ(t->Encode("the the"), (Ids{'t', 257, 258}));
  EXPECT_EQ(t->Encode("x<|endoftext|> the"), (Ids{'x', 259, 258}));
  EXPECT_EQ(t->eos_id(), 259);
  // Every byte value, invalid UTF-8 and NULs included, comes back unchanged.
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  for (const std::string& text : {all, std::string("\xFF\xFE the\x00\xC3", 9), std::string("caf\xC3\xA9 \xF0\x9F\x98\x80")}) {
    const Ids ids = t->Encode(text);
    EXPECT_EQ(t->Decode(ids), text);
  }
  // add_prefix_space: a space before each segment that lacks one.
  const auto prefixed = FromJson(ByteLevelJson(R"({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true})"));
  EXPECT_EQ(prefixed->Encode("the"), (Ids{258}));
}

TEST(HfJsonTokenizer, SplitBehaviors) {
  auto with = [](const std::string& behavior) {
    return FromJson(ByteLevelJson(R"({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "-"}, "behavior": ")" + behavior + R"("},
        {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})"));
  };
  // "he-he": Isolated keeps "-" alone; Removed drops it; merged variants glue it to a side.
  EXPECT_EQ(with("Isolated")->Encode("he-he"), (Ids{257, '-', 257}));
  EXPECT_EQ(with("Removed")->Encode("he-he"), (Ids{257, 257}));
  EXPECT_EQ(with("MergedWithPrevious")->Encode("he-he"), (Ids{257, '-', 257}));
  // Without a split, "e-h" would not matter; with one, "h" "e" never merge across pieces.
  const auto regex = FromJson(ByteLevelJson(R"({"type": "Split", "pattern": {"Regex": "\\p{L}"}, "behavior": "Isolated"})"));
  EXPECT_EQ(regex->Encode("he"), (Ids{'h', 'e'}));
}

TEST(HfJsonTokenizer, UnicodeNormalizers) {
  // é precomposed (U+00E9) and decomposed (e U+0301).
  auto with = [](const std::string& form) {
    return FromJson(R"({"normalizer": {"type": ")" + form + R"("},
        "model": {"type": "BPE", "vocab": {"\u00e9": 0, "e": 1, "\u0301": 2, "<0xFF>": 3, "\ufb01": 4, "f": 5, "i": 6},
                  "byte_fallback": true}})");
  };
  EXPECT_EQ(with("NFC")->Encode("e\xCC\x81\xC3\xA9"), (Ids{0, 0}));
  EXPECT_EQ(with("NFD")->Encode("e\xCC\x81\xC3\xA9"), (Ids{1, 2, 1, 2}));
  // Compatibility forms split the ﬁ ligature (U+FB01); canonical ones keep it.
  EXPECT_EQ(with("NFKC")->Encode("\xEF\xAC\x81"), (Ids{5, 6}));
  EXPECT_EQ(with("NFC")->Encode("\xEF\xAC\x81"), (Ids{4}));
  // Invalid UTF-8 passes through normalization untouched (to byte fallback here).
  EXPECT_EQ(with("NFC")->Encode("e\xFF\xCC\x81"), (Ids{1, 3, 2}));
}

TEST(HfJsonTokenizer, MetaspacePreTokenizer) {
  const auto t = FromJson(R"({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
      "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"},
      "model": {"type": "BPE", "vocab": {"▁": 0, "a": 1, "▁a": 2, "b": 3}, "merges": ["▁ a"]}})");
  EXPECT_EQ(t->Encode("a ab"), (Ids{2, 2, 3}));
  EXPECT_EQ(t->Decode({2, 2, 3}), "a ab");
}

TEST(HfJsonTokenizer, DecodeRefusesIdsOutsideTheVocabulary) {
  const auto t = FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2}, "merges": []}})");
  EXPECT_EQ(t->vocab_size(), 3);
  EXPECT_NE(ErrorOf([&] { t->Decode({0, 3}); }).find("id 3 at position 1 is outside [0, 3)"), std::string::npos);
  EXPECT_NE(ErrorOf([&] { t->Decode({-1}); }).find("id -1 at position 0"), std::string::npos);
  EXPECT_NE(ErrorOf([&] { t->Decode({1}); }).find("id 1 at position 0 names no token"), std::string::npos);
}

TEST(HfJsonTokenizer, HostileFilesAreRefusedByName) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"model\": ", "malformed JSON"},
      {"[1, 2]", "not a JSON object"},
      {"{}", "has no \"model\" object"},
      {R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "model type 'WordPiece' is not supported"},
      {R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})", "model type 'Unigram' is not supported"},
      {R"({"model": {"type": "BPE", "vocab": {}}})", "model.vocab is empty"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", "id -1 is outside"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 1e12}}})", "id 1000000000000 is outside [0, 1048576)"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0.5}}})", "must be an integer id"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}})", "id 0 is given to both"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a x"]}})", "model.merges[0]: 'x' is not in model.vocab"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}})", "merged token 'aa' is not in model.vocab"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "must be two tokens separated by one space"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}})", "must be \"a b\" or [\"a\", \"b\"]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": 3}})", "model.merges must be an array"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "<unk>"}})", "unk_token '<unk>' is not in model.vocab"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "dropout": 0.1}})", "model.dropout is not supported"},
      {R"({"normalizer": {"type": "Lowercase"}, "model": {"type": "BPE", "vocab": {"a": 0}}})", "normalizer type 'Lowercase' is not supported"},
      {R"({"pre_tokenizer": {"type": "BertPreTokenizer"}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "pre-tokenizer type 'BertPreTokenizer' is not supported"},
      {R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "regular expression '(a' is not valid at offset 2"},
      {R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Contiguous"}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "behavior 'Contiguous' is not supported"},
      {R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "byte-level vocabulary has no token for byte 0"},
      {R"({"decoder": {"type": "WordPiece"}, "model": {"type": "BPE", "vocab": {"a": 0}}})", "decoder type 'WordPiece' is not supported"},
      {R"({"added_tokens": [{"id": 1, "content": "<m>", "lstrip": true}], "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "added_tokens[0] ('<m>'): lstrip is not supported"},
      {R"({"added_tokens": [{"id": "x", "content": "<m>"}], "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "added_tokens[0].id must be an id"},
      {R"({"added_tokens": [{"id": 0, "content": "<m>"}], "model": {"type": "BPE", "vocab": {"a": 0}}})",
       "id 0 is given to both 'a' and '<m>'"},
  };
  for (const auto& [json, want] : cases) {
    const std::string error = ErrorOf([&] { FromJson(json); });
    EXPECT_NE(error.find("tokenizer.json: "), std::string::npos) << json;
    EXPECT_NE(error.find(want), std::string::npos) << json << "\n  error: " << error;
  }
}

TEST(HfJsonTokenizer, CatastrophicExpressionsHitTheMatchLimit) {
  // (a|aa)*b backtracks exponentially on a run of a's not followed by b (a b later keeps PCRE2
  // from ruling the match out before trying); the match limit stops it.
  const auto t = FromJson(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a|aa)*b"}},
      "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}})");
  const std::string error = ErrorOf([&] { t->Encode(std::string(200, 'a') + "cb"); });
  EXPECT_NE(error.find("match limit exceeded"), std::string::npos) << error;
  EXPECT_EQ(t->Encode("aab"), (Ids{0, 0, 1}));
}

// A SentencePiece BPE model written with the protobuf wire format
// (sentencepiece_model.proto): pieces {piece, score, type}, trainer_spec {model_type = BPE,
// byte_fallback}, normalizer_spec {identity, dummy prefix, escaped whitespace}.
std::string SentencePieceModel() {
  auto varint = [](uint64_t v) {
    std::string out;
    do {
      uint8_t b = v & 0x7F;
      v >>= 7;
      if (v) b |= 0x80;
      out += static_cast<char>(b);
    } while (v);
    return out;
  };
  auto bytes = [&](int field, const std::string& s) { return varint(field << 3 | 2) + varint(s.size()) + s; };
  auto integer = [&](int field, int64_t v) { return varint(field << 3) + varint(static_cast<uint64_t>(v)); };
  auto real = [&](int field, float f) {
    std::string s(4, '\0');
    std::memcpy(&s[0], &f, 4);
    return varint(field << 3 | 5) + s;
  };
  std::string model;
  // id: piece, score, type (1 normal, 2 unknown, 3 control, 6 byte)
  // Byte fallback needs all 256 byte pieces (ids 3..258).
  std::vector<std::tuple<std::string, float, int>> pieces = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    pieces.emplace_back(name, 0, 6);
  }
  for (const auto& p : std::vector<std::tuple<std::string, float, int>>{
           {"▁", -5, 1}, {"a", -6, 1}, {"b", -7, 1}, {"ab", -1, 1}, {"▁ab", -2, 1}}) {
    pieces.push_back(p);
  }
  for (const auto& [piece, score, type] : pieces) model += bytes(1, bytes(1, piece) + real(2, score) + integer(3, type));
  model += bytes(2, integer(3, 2) + integer(4, pieces.size()) + integer(35, 1) + integer(40, 0) + integer(41, 1) +
                        integer(42, 2) + integer(43, -1));
  model += bytes(3, bytes(1, "identity") + integer(3, 1) + integer(4, 0) + integer(5, 1));
  return model;
}

TEST(SentencePieceTokenizer, EncodesAndDecodesThroughLibsentencepiece) {
  const auto t = LoadTokenizer({TokenizerKind::kSentencePiece, SentencePieceModel()}, "tokenizer.model");
  EXPECT_EQ(t->vocab_size(), 264);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  // "ab ab": ▁ab ▁ab (dummy prefix, spaces as ▁); é (C3 A9) by byte fallback.
  EXPECT_EQ(t->Encode("ab ab"), (Ids{263, 263}));
  EXPECT_EQ(t->Encode("ba é"), (Ids{259, 261, 260, 259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t->Decode(t->Encode("ba é ab")), "ba é ab");
  EXPECT_NE(ErrorOf([&] { t->Decode({264}); }).find("id 264 at position 0 is outside [0, 264)"), std::string::npos);
  EXPECT_NE(ErrorOf([] { LoadTokenizer({TokenizerKind::kSentencePiece, "not a protobuf"}, "m.model"); })
                .find("m.model: not a SentencePiece model"),
            std::string::npos);
}

TEST(ByteTokenizer, IdsAreBytes) {
  const auto t = ByteTokenizer();
  EXPECT_EQ(t->Encode(std::string("a\xFF\0", 3)), (Ids{'a', 255, 0}));
  EXPECT_EQ(t->Decode({'a', 255, 0}), std::string("a\xFF\0", 3));
  EXPECT_EQ(t->vocab_size(), 256);
  EXPECT_NE(ErrorOf([&] { t->Decode({256}); }).find("id 256 at position 0 is outside [0, 256)"), std::string::npos);
}

TEST(TextTokens, EncodedOnceThenReadFromTheCache) {
  char dir_template[] = "/tmp/slim-text-tokens-test-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string json = CharBpe(R"(["a b"])");
  const TokenizerFile file{TokenizerKind::kHfJson, json};
  const auto t = LoadTokenizer(file, "tokenizer.json");
  std::ofstream(dir + "/data.txt") << "abcab";
  DataSource source;
  source.path = dir + "/data.txt";
  source.vocab_size = 6;
  const std::string cache = dir + "/cache";
  EXPECT_EQ(ReadTextTokens(source, *t, file, cache), (Ids{3, 2, 3}));
  // One entry; a different tokenizer file is a different key.
  auto entries = [&] {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(cache)) names.push_back(e.path().string());
    return names;
  };
  ASSERT_EQ(entries().size(), 1u);
  const std::string entry = entries()[0];
  // The entry is what is read next time: rewrite it with other valid ids and they come back.
  {
    std::string bytes = "slimids1";
    bytes += std::string("\x01\0\0\0\0\0\0\0", 8) + std::string("\x05\0\0\0", 4);
    std::ofstream(entry, std::ios::binary) << bytes;
  }
  EXPECT_EQ(ReadTextTokens(source, *t, file, cache), (Ids{5}));
  // A damaged entry (an id the model does not have, a wrong size) is recomputed and rewritten.
  {
    std::string bytes = "slimids1";
    bytes += std::string("\x01\0\0\0\0\0\0\0", 8) + std::string("\x09\0\0\0", 4);
    std::ofstream(entry, std::ios::binary) << bytes;
  }
  EXPECT_EQ(ReadTextTokens(source, *t, file, cache), (Ids{3, 2, 3}));
  std::ofstream(entry, std::ios::binary) << "slimids1\x07";
  EXPECT_EQ(ReadTextTokens(source, *t, file, cache), (Ids{3, 2, 3}));
  EXPECT_EQ(ReadTextTokens(source, *t, file, cache), (Ids{3, 2, 3}));
  const TokenizerFile other{TokenizerKind::kHfJson, CharBpe(R"(["b c"])")};
  EXPECT_EQ(ReadTextTokens(source, *LoadTokenizer(other, "other"), other, cache), (Ids{0, 4, 0, 1}));
  EXPECT_EQ(entries().size(), 2u);
  // Ids beyond the model's vocabulary are refused naming the id and its text.
  source.vocab_size = 3;
  const std::string error = ErrorOf([&] { ReadTextTokens(source, *t, file, ""); });
  EXPECT_NE(error.find("the tokenizer gives id 3 (token 0, 'ab'), but the model's vocab_size is 3"), std::string::npos)
      << error;
  // JSONL: the documents' text joined by newlines, keyed by the text field too.
  std::ofstream(dir + "/docs.jsonl") << "{\"t\": \"ab\"}\n{\"t\": \"c\"}\n";
  DataSource jsonl{dir + "/docs.jsonl", DataFormat::kJsonl, "t", 6};
  const auto newline = FromJson(CharBpe(R"(["a b"])", "", R"(, "added_tokens": [{"id": 6, "content": "\n"}])"));
  jsonl.vocab_size = 7;
  EXPECT_EQ(ReadTextTokens(jsonl, *newline, file, cache), (Ids{3, 6, 2}));
  std::filesystem::remove_all(dir);
}

TEST(TokenizerFiles, ReadFromADirectoryOrAFileByName) {
  char dir_template[] = "/tmp/slim-tokenizer-test-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  EXPECT_NE(ErrorOf([&] { ReadTokenizerFile(dir); }).find("has neither tokenizer.json nor tokenizer.model"),
            std::string::npos);
  EXPECT_FALSE(HasTokenizerFile(dir));
  std::ofstream(dir + "/tokenizer.model", std::ios::binary) << SentencePieceModel();
  EXPECT_TRUE(HasTokenizerFile(dir));
  EXPECT_EQ(ReadTokenizerFile(dir).kind, TokenizerKind::kSentencePiece);
  std::ofstream(dir + "/tokenizer.json") << CharBpe("[]");
  const TokenizerFile json = ReadTokenizerFile(dir);  // tokenizer.json preferred
  EXPECT_EQ(json.kind, TokenizerKind::kHfJson);
  EXPECT_EQ(json.bytes, CharBpe("[]"));
  std::ofstream(dir + "/vocab.txt") << "a\n";
  EXPECT_NE(ErrorOf([&] { ReadTokenizerFile(dir + "/vocab.txt"); }).find("unknown kind of file"), std::string::npos);
  EXPECT_NE(ErrorOf([&] { ReadTokenizerFile(dir + "/missing.json"); }).find("no such file"), std::string::npos);
  std::ofstream(dir + "/empty.json") << "";
  EXPECT_NE(ErrorOf([&] { ReadTokenizerFile(dir + "/empty.json"); }).find("is empty"), std::string::npos);
  EXPECT_EQ(ParseTokenizerKind(TokenizerKindName(TokenizerKind::kSentencePiece), "f"), TokenizerKind::kSentencePiece);
  EXPECT_NE(ErrorOf([] { ParseTokenizerKind("wordpiece", "tokenizer"); }).find("tokenizer: unknown tokenizer kind"),
            std::string::npos);
  for (const char* f : {"tokenizer.model", "tokenizer.json", "vocab.txt", "empty.json"}) std::remove((dir + "/" + f).c_str());
  rmdir(dir.c_str());
}

}  // namespace
}  // namespace slim
