// Data files: every format read correctly, every bad-data path reported with file and line or
// offset, packing and deterministic splitting.
#include "base/dataset.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "base/errors.h"
#include "base/json.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = testing::TempPath(name);
  testing::WriteFileBytes(path, bytes);
  return path;
}

std::string ErrorOf(const DataSource& s) {
  try {
    ReadTokens(s);
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "no error";
}

TEST(Dataset, TextBytesAreTheIds) {
  const std::string path = WriteTemp("a.txt", "hé\n");
  const std::vector<int32_t> t = ReadTokens({path, DataFormat::kText});
  EXPECT_EQ(t, (std::vector<int32_t>{'h', 0xC3, 0xA9, '\n'}));
}

TEST(Dataset, JsonlJoinsDocumentsAndDecodesEscapes) {
  const std::string path = WriteTemp("a.jsonl", "{\"text\":\"ab\",\"id\":1}\n\n{\"text\":\"\\u00e9\\ud83d\\ude00\"}\n");
  const std::vector<int32_t> t = ReadTokens({path, DataFormat::kJsonl});
  // "ab", '\n', é (C3 A9), 😀 (F0 9F 98 80)
  EXPECT_EQ(t, (std::vector<int32_t>{'a', 'b', '\n', 0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80}));
  DataSource other{WriteTemp("b.jsonl", "{\"body\":\"xy\"}\n"), DataFormat::kJsonl, "body"};
  EXPECT_EQ(ReadTokens(other), (std::vector<int32_t>{'x', 'y'}));
}

// What slimd checks at CreateJob for a JSONL dataset and the job's text field: every line, with
// the dataset named instead of the server's path.
TEST(Dataset, JsonlTextFieldIsCheckedUnderALabel) {
  const std::string path = WriteTemp("label.jsonl", "{\"body\":\"a\"}\n{\"body\":\"b\"}\n{\"text\":\"c\"}\n");
  EXPECT_NO_THROW(CheckJsonlTextField(WriteTemp("ok.jsonl", "{\"body\":\"a\"}\n"), "body", "dataset ds-1"));
  try {
    CheckJsonlTextField(path, "body", "dataset ds-1");
    ADD_FAILURE() << "accepted a line without the field";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()), "dataset ds-1:3: no \"body\" field");
  }
}

TEST(Dataset, IdFilesAreLittleEndian) {
  const std::string u16 = WriteTemp("a.u16", std::string("\x01\x00\xff\x01", 4));
  EXPECT_EQ(ReadTokens({u16, DataFormat::kIdsU16, "text", 1000}), (std::vector<int32_t>{1, 511}));
  const std::string u32 = WriteTemp("a.u32", std::string("\x00\x00\x01\x00", 4));
  EXPECT_EQ(ReadTokens({u32, DataFormat::kIdsU32, "text", 70000}), (std::vector<int32_t>{65536}));
}

TEST(Dataset, BadDataIsReportedPrecisely) {
  const std::string empty = WriteTemp("empty.txt", "");
  EXPECT_EQ(ErrorOf({empty, DataFormat::kText}), empty + ": empty file");
  EXPECT_EQ(ErrorOf({"/nonexistent/x", DataFormat::kText}), "/nonexistent/x: cannot open");

  const std::string bad_json = WriteTemp("bad.jsonl", "{\"text\":\"a\"}\n{\"text\":\"b\"}\n{\"text\": oops}\n");
  EXPECT_EQ(ErrorOf({bad_json, DataFormat::kJsonl}).rfind(bad_json + ":3: invalid JSON", 0), 0u)
      << ErrorOf({bad_json, DataFormat::kJsonl});
  const std::string no_field = WriteTemp("nofield.jsonl", "{\"text\":\"a\"}\n{\"txt\":\"b\"}\n");
  EXPECT_EQ(ErrorOf({no_field, DataFormat::kJsonl}), no_field + ":2: no \"text\" field");
  const std::string not_string = WriteTemp("num.jsonl", "{\"text\":5}\n");
  EXPECT_EQ(ErrorOf({not_string, DataFormat::kJsonl}), not_string + ":1: \"text\" is not a string");
  const std::string array = WriteTemp("arr.jsonl", "[1]\n");
  EXPECT_EQ(ErrorOf({array, DataFormat::kJsonl}), array + ":1: expected a JSON object");
  const std::string blank = WriteTemp("blank.jsonl", "\n  \n");
  EXPECT_EQ(ErrorOf({blank, DataFormat::kJsonl}), blank + ": no documents (only blank lines)");

  const std::string odd = WriteTemp("odd.u16", std::string("\x01\x00\x02", 3));
  EXPECT_EQ(ErrorOf({odd, DataFormat::kIdsU16, "text", 100}),
            odd + ": size 3 bytes is not a whole number of 2-byte ids");
  const std::string big = WriteTemp("big.u16", std::string("\x01\x00\x02\x00\x64\x00", 6));
  EXPECT_EQ(ErrorOf({big, DataFormat::kIdsU16, "text", 100}),
            big + ": id 100 at byte offset 4 is >= vocab_size 100");
  EXPECT_NE(ErrorOf({WriteTemp("t.txt", "abc"), DataFormat::kText, "text", 100}).find("needs vocab_size >= 256"),
            std::string::npos);
  EXPECT_THROW(ParseDataFormat("csv"), EngineError);
}

TEST(Dataset, PackingAndSplitting) {
  EXPECT_EQ(CountSequences(1001, 100, "train"), 10);  // 10 × 100 inputs + 1 final target
  EXPECT_EQ(CountSequences(1000, 100, "train"), 9);
  EXPECT_THROW(CountSequences(100, 100, "train"), EngineError);
  const DataSplit a = SplitSequences(50, 0.1, 7), b = SplitSequences(50, 0.1, 7), c = SplitSequences(50, 0.1, 8);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.validation, b.validation);
  EXPECT_NE(a.train, c.train);
  EXPECT_EQ(a.validation.size(), 5u);
  std::set<int64_t> all(a.train.begin(), a.train.end());
  all.insert(a.validation.begin(), a.validation.end());
  EXPECT_EQ(all.size(), 50u);  // disjoint and complete
  EXPECT_EQ(SplitSequences(2, 0.01, 1).validation.size(), 1u);  // at least one
  // One sequence stays a training sequence (found by dataset_fuzz: a fraction >= 0.5 used to put
  // it into validation, leaving nothing to train on).
  for (double fraction : {0.1, 0.5, 0.9}) {
    EXPECT_EQ(SplitSequences(1, fraction, 1).train, std::vector<int64_t>{0}) << fraction;
    EXPECT_TRUE(SplitSequences(1, fraction, 1).validation.empty()) << fraction;
  }
  EXPECT_EQ(SplitSequences(2, 0.9, 1).train.size(), 1u);        // never all
  EXPECT_TRUE(SplitSequences(5, 0.0, 1).validation.empty());
  EXPECT_THROW(SplitSequences(5, 1.0, 1), EngineError);
}

TEST(Json, ParsesTheSubsetAndRejectsTheRest) {
  const Json v = ParseJson(R"({"a":[1,-2.5e1,true,false,null],"b":{"c":"d\n"}})");
  ASSERT_EQ(v.kind, Json::kObject);
  EXPECT_EQ(v.members.at("a").items.size(), 5u);
  EXPECT_DOUBLE_EQ(v.members.at("a").items[1].number, -25.0);
  EXPECT_TRUE(v.members.at("a").items[2].boolean);
  EXPECT_EQ(v.members.at("b").members.at("c").text, "d\n");
  for (const char* bad : {"{", "{\"a\":}", "[1,]", "\"\\ud800\"", "{} x", "\"\x01\"", "nul"}) {
    EXPECT_THROW(ParseJson(bad), std::runtime_error) << bad;
  }
  EXPECT_THROW(ParseJson(std::string(100, '[') + std::string(100, ']')), std::runtime_error);  // depth
  const std::string tricky = "a\"b\\c\n\xc3\xa9";
  EXPECT_EQ(JsonEscape(tricky), "a\\\"b\\\\c\\u000a\xc3\xa9");
  EXPECT_EQ(ParseJson("\"" + JsonEscape(tricky) + "\"").text, tricky);  // round trip
}

}  // namespace
}  // namespace slim
