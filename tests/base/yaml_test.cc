#include "base/yaml.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "base/errors.h"
#include "base/json.h"

namespace slim {
namespace {

// A canonical text for a tree, so that a failed comparison shows both trees.
std::string Dump(const Json& v) {
  switch (v.kind) {
    case Json::kNull:
      return "null";
    case Json::kBool:
      return v.boolean ? "true" : "false";
    case Json::kString:
      return '"' + JsonEscape(v.text) + '"';
    case Json::kNumber: {
      char buf[40];
      std::snprintf(buf, sizeof(buf), "%.17g", v.number);
      return buf;
    }
    case Json::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < v.items.size(); ++i) out += (i ? "," : "") + Dump(v.items[i]);
      return out + "]";
    }
    case Json::kObject: {
      std::string out = "{";
      for (const auto& [key, member] : v.members) {
        out += (out.size() > 1 ? "," : "") + ('"' + JsonEscape(key) + "\":") + Dump(member);
      }
      return out + "}";
    }
  }
  return "?";
}

// Parses `yaml` and compares it with `json` read by ParseJson.
void ExpectSameAsJson(const std::string& yaml, const std::string& json) {
  EXPECT_EQ(Dump(ParseYaml(yaml)), Dump(ParseJson(json))) << yaml;
}

std::string ErrorOf(const std::string& yaml) {
  try {
    const Json v = ParseYaml(yaml);
    return "no error, parsed " + Dump(v);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
}

TEST(YamlTest, RealisticJobSpec) {
  const std::string spec = R"(---
# A training job for slim-train.
name: tiny-shakespeare   # trailing comment
description: "fine-tune \"tiny\"\tmodel\n"
model:
  preset: tiny
  layers: 4
  dropout: 0.1
  tied_embeddings: true
  attention: {kind: slim, heads: 8, window: [64, 128]}
data:
  train: data/train.jsonl
  eval: 'data/eval.jsonl'
  fields:
  - text
  - "label"
optimizer:
  name: adamw
  lr: 3e-4
  betas: [0.9, 0.95]
  weight_decay: .01
  clip: ~
schedule:
  - phase: warmup
    steps: 100
  - phase: cosine
    steps: 1000
    min_lr: 1.0e-5
devices:
    - cuda:0
    - cuda:1
notes: |
  first line
    indented line

  after a blank line
summary: >
  folded
  into one line
empty:
...
)";
  const Json expected = ParseJson(R"({
    "name": "tiny-shakespeare",
    "description": "fine-tune \"tiny\"\tmodel\n",
    "model": {"preset": "tiny", "layers": 4, "dropout": 0.1, "tied_embeddings": true,
              "attention": {"kind": "slim", "heads": 8, "window": [64, 128]}},
    "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "fields": ["text", "label"]},
    "optimizer": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.01,
                  "clip": null},
    "schedule": [{"phase": "warmup", "steps": 100},
                 {"phase": "cosine", "steps": 1000, "min_lr": 1e-5}],
    "devices": ["cuda:0", "cuda:1"],
    "notes": "first line\n  indented line\n\nafter a blank line\n",
    "summary": "folded into one line\n",
    "empty": null
  })");
  EXPECT_EQ(Dump(ParseYaml(spec)), Dump(expected));
}

TEST(YamlTest, ScalarTypes) {
  struct Case {
    const char* text;
    Json::Kind kind;
    double number;
    bool boolean;
  };
  const Case cases[] = {
      {"null", Json::kNull, 0, false},
      {"Null", Json::kNull, 0, false},
      {"NULL", Json::kNull, 0, false},
      {"~", Json::kNull, 0, false},
      {"", Json::kNull, 0, false},
      {"true", Json::kBool, 0, true},
      {"True", Json::kBool, 0, true},
      {"TRUE", Json::kBool, 0, true},
      {"false", Json::kBool, 0, false},
      {"False", Json::kBool, 0, false},
      {"FALSE", Json::kBool, 0, false},
      {"0", Json::kNumber, 0, false},
      {"42", Json::kNumber, 42, false},
      {"-17", Json::kNumber, -17, false},
      {"+5", Json::kNumber, 5, false},
      {"007", Json::kNumber, 7, false},
      {"0x1F", Json::kNumber, 31, false},
      {"0o17", Json::kNumber, 15, false},
      {"1e-4", Json::kNumber, 1e-4, false},
      {".5", Json::kNumber, 0.5, false},
      {"-3.0", Json::kNumber, -3, false},
      {"1.", Json::kNumber, 1, false},
      {"2.5E+3", Json::kNumber, 2500, false},
  };
  for (const Case& c : cases) {
    const Json v = ParseYaml(std::string("v: ") + c.text).members.at("v");
    EXPECT_EQ(v.kind, c.kind) << c.text;
    if (c.kind == Json::kNumber) {
      EXPECT_EQ(v.number, c.number) << c.text;
    }
    if (c.kind == Json::kBool) {
      EXPECT_EQ(v.boolean, c.boolean) << c.text;
    }
  }
  const Json special = ParseYaml("[.inf, -.inf, +.Inf, .NaN, .nan, .NAN]");
  ASSERT_EQ(special.items.size(), 6u);
  EXPECT_TRUE(std::isinf(special.items[0].number) && special.items[0].number > 0);
  EXPECT_TRUE(std::isinf(special.items[1].number) && special.items[1].number < 0);
  EXPECT_TRUE(std::isinf(special.items[2].number) && special.items[2].number > 0);
  for (int i = 3; i < 6; ++i) EXPECT_TRUE(std::isnan(special.items[i].number)) << i;
  // Not numbers, booleans or null in the core schema: they stay strings.
  for (const char* text : {"yes", "no", "on", "1e", "1.2.3", "0x", "0xZZ", "0b101", "-1-", ".",
                           "1_000", "12abc", "nan", "inf", "tru", "a b", "http://x.org/a#b"}) {
    const Json v = ParseYaml(std::string("v: ") + text).members.at("v");
    EXPECT_EQ(v.kind, Json::kString) << text;
    EXPECT_EQ(v.text, text);
  }
}

TEST(YamlTest, QuotedScalarsAreStrings) {
  const Json v = ParseYaml(R"(
a: "true"
b: '1'
c: "null"
d: ''
e: 'it''s # not a comment'
f: "\"\\\/\b\f\n\r\t"
g: "caf\u00e9 \ud83d\ude00"
h: "a: b, [c]"
)");
  for (const char* key : {"a", "b", "c", "d", "e", "f", "g", "h"}) {
    EXPECT_EQ(v.members.at(key).kind, Json::kString) << key;
  }
  EXPECT_EQ(v.members.at("a").text, "true");
  EXPECT_EQ(v.members.at("b").text, "1");
  EXPECT_EQ(v.members.at("d").text, "");
  EXPECT_EQ(v.members.at("e").text, "it's # not a comment");
  EXPECT_EQ(v.members.at("f").text, "\"\\/\b\f\n\r\t");
  EXPECT_EQ(v.members.at("g").text, "caf\xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(v.members.at("h").text, "a: b, [c]");
}

TEST(YamlTest, KeysAreTextAsIs) {
  const Json v = ParseYaml(
      "1: a\ntrue: b\nnull: c\n\"quoted key\": d\n'x y': e\nkey with spaces: "
      "f\n");
  EXPECT_EQ(Dump(v), Dump(ParseJson(R"({"1": "a", "true": "b", "null": "c", "quoted key": "d",
                                         "x y": "e", "key with spaces": "f"})")));
}

TEST(YamlTest, Sequences) {
  // At the key's indentation, more indented, nested compact, sequences of mappings.
  ExpectSameAsJson("items:\n- a\n- b\nnext: 1\n", R"({"items": ["a", "b"], "next": 1})");
  ExpectSameAsJson("items:\n   - a\n   - b\n", R"({"items": ["a", "b"]})");
  ExpectSameAsJson("- - a\n  - b\n- - c\n", R"([["a", "b"], ["c"]])");
  ExpectSameAsJson("-\n  - a\n-\n- x\n", R"([["a"], null, "x"])");
  ExpectSameAsJson("- name: a\n  size: 1\n- name: b\n  list:\n  - 1\n  - 2\n  tail: t\n",
                   R"([{"name": "a", "size": 1}, {"name": "b", "list": [1, 2], "tail": "t"}])");
  ExpectSameAsJson("-   k: v\n    n:\n      deep: 1\n", R"([{"k": "v", "n": {"deep": 1}}])");
  ExpectSameAsJson("- \"a\": 1\n  'b': 2\n", R"([{"a": 1, "b": 2}])");
}

TEST(YamlTest, FlowCollections) {
  ExpectSameAsJson("[]", "[]");
  ExpectSameAsJson("{}", "{}");
  ExpectSameAsJson("[a, 1, \"x\", 'y', true, null, ~, [], {}]",
                   R"(["a", 1, "x", "y", true, null, null, [], {}])");
  ExpectSameAsJson("{a: 1, b: [2, {c: d}], e: , f: 'g'}",
                   R"({"a": 1, "b": [2, {"c": "d"}], "e": null, "f": "g"})");
  ExpectSameAsJson("[1, 2, ]", "[1, 2]");
  ExpectSameAsJson("{a: 1,}", R"({"a": 1})");
  ExpectSameAsJson("[a b, c:d, http://x/y]", R"(["a b", "c:d", "http://x/y"])");
  ExpectSameAsJson("key: [1,\n  2,  # a comment\n  3]\nnext: {a:\n    1}\n",
                   R"({"key": [1, 2, 3], "next": {"a": 1}})");
}

TEST(YamlTest, JsonIsAcceptedAndGivesTheSameTree) {
  for (const std::string& json : {
           std::string(
               R"({"a": 1, "b": [true, false, null], "c": {"d": "e\u00e9\n", "f": -2.5e3}})"),
           std::string(R"({"a":1,"b":[1,2,{"c":[]}],"":"empty key"})"),
           std::string("{\n\t\"name\": \"x\",\n\t\"list\": "
                       "[\n\t\t1,\n\t\t2\n\t],\n\t\"o\": {}\n}\n"),
           std::string(R"([1, -0.5, 1E5, "s", [], {}])"),
           std::string(R"("just a string")"),
           std::string("3.25"),
           std::string("null"),
       }) {
    ExpectSameAsJson(json, json);
  }
}

TEST(YamlTest, BlockScalars) {
  ExpectSameAsJson("a: |\n  x\n  y\n", R"({"a": "x\ny\n"})");
  ExpectSameAsJson("a: |-\n  x\n  y\n\n", R"({"a": "x\ny"})");
  ExpectSameAsJson("a: |+\n  x\n\n\nb: 1\n", R"({"a": "x\n\n\n", "b": 1})");
  ExpectSameAsJson("a: |\n  # not a comment\n  x: y\n", R"({"a": "# not a comment\nx: y\n"})");
  ExpectSameAsJson("a: |\n\n  x\nb: |\nc: 1\n", R"({"a": "\nx\n", "b": "", "c": 1})");
  ExpectSameAsJson("a: >\n  one\n  two\n\n  three\n", R"({"a": "one two\nthree\n"})");
  ExpectSameAsJson("a: >-\n  one\n    code\n  two\n", R"({"a": "one\n  code\ntwo"})");
  ExpectSameAsJson("- |\n  x\n- >\n  y\n  z\n", R"(["x\n", "y z\n"])");
  ExpectSameAsJson("- k: |  # comment on the header\n    x\n  j: 1\n", R"([{"k": "x\n", "j": 1}])");
  ExpectSameAsJson("a: |\n  no final newline", R"({"a": "no final newline"})");
  ExpectSameAsJson("|\n text\n", R"("text\n")");
}

TEST(YamlTest, CommentsMarkersAndLineEndings) {
  EXPECT_EQ(ParseYaml("").kind, Json::kNull);
  EXPECT_EQ(ParseYaml("# only a comment\n\n").kind, Json::kNull);
  ExpectSameAsJson(
      "# c\n---   # start\n# c\na: 1 # c\n\n  # indented comment\nb: "
      "x#y\n...\n# end\n",
      R"({"a": 1, "b": "x#y"})");
  ExpectSameAsJson("a: 1\r\nb:\r\n  - c\r\n", R"({"a": 1, "b": ["c"]})");
  ExpectSameAsJson(
      "\xEF\xBB\xBF"
      "a: 1\n",
      R"({"a": 1})");
  ExpectSameAsJson("a: 1\n\t# a comment after a tab\n", R"({"a": 1})");
}

// Numbers follow RFC 8259 exactly: strtod's extensions are refused, and a number beyond a
// double's range is an error, not an infinity that the readers of specs and events would then
// convert to an integer (undefined behaviour; found by the fuzz targets). Whitespace is space,
// tab, LF and CR. Errors are EngineError(kInvalidArgument) with the byte offset.
TEST(JsonTest, NumbersAndWhitespaceFollowRfc8259) {
  EXPECT_EQ(ParseJson("0").number, 0);
  EXPECT_EQ(ParseJson("-0").number, 0);
  EXPECT_EQ(ParseJson("-3.25").number, -3.25);
  EXPECT_EQ(ParseJson("1E+2").number, 100);
  EXPECT_EQ(ParseJson("2.5e-3").number, 2.5e-3);
  EXPECT_EQ(ParseJson("1e-400").number, 0);  // underflow rounds to zero, as in every reader
  EXPECT_EQ(ParseJson(" \t\r\n[1]\r\n").items.size(), 1u);
  for (const char* bad : {"-inf", "-nan", "-infinity", "0x10", "-0x1p3", "01", "-01", "1.", ".5", "+1",
                          "1e", "1e+", "-", "1e999", "-1e400", "[1e309]", "\v1", "1\f"}) {
    try {
      ParseJson(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << bad;
    }
  }
  try {
    ParseJson("[1, 1e999]");
    ADD_FAILURE() << "accepted 1e999";
  } catch (const EngineError& e) {
    EXPECT_STREQ(e.what(), "number out of range at byte 4");
  }
  EXPECT_THROW(SerializeJson(JsonNumber(std::nan(""))), EngineError);
}

// A lone CR breaks lines, as in YAML 1.2 and as JSON takes it for whitespace: a JSON document
// with CR line ends is the same tree for both readers (found by job_spec_fuzz: "\r true " was
// the string "\r true" for ParseYaml and true for ParseJson).
TEST(YamlTest, LoneCarriageReturnsBreakLines) {
  ExpectSameAsJson("\r true ", "true");
  ExpectSameAsJson("a: 1\rb:\r  - x\r  - y\r", R"({"a": 1, "b": ["x", "y"]})");
  ExpectSameAsJson("{\"a\": [1,\r2]}\r", R"({"a": [1, 2]})");
  ExpectSameAsJson("a: |\r  one\r  two\r", R"({"a": "one\ntwo\n"})");
  EXPECT_THROW(ParseYaml("a: \"one\rtwo\"\n"), EngineError);  // quoted scalars end on their line
}

TEST(YamlTest, Errors) {
  struct Case {
    std::string yaml;
    int line;
    std::string complaint;
  };
  const std::vector<Case> cases = {
      {"a:\n\tb: 1\n", 2, "tab character in indentation"},
      {"a:\n  \tb: 1\n", 2, "tab character in indentation"},
      {"a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a'"},
      {"x:\n  a: 1\n  'a': 2\n", 3, "duplicate key 'a'"},
      {"{a: 1, b: 2, a: 3}", 1, "duplicate key 'a'"},
      {"a: 1\n  b: 2\n", 2, "bad indentation"},
      {"a:\n    b: 1\n  c: 2\n", 3, "bad indentation"},
      {"- a\n  - b\n", 2, "bad indentation"},
      {"  a: 1\nb: 2\n", 2, "bad indentation"},
      {"a: \"abc\n", 1, "unterminated double-quoted string"},
      {"a: 'abc\n", 1, "unterminated single-quoted string"},
      {"a: \"abc\\", 1, "unterminated double-quoted string"},
      {"a:\n  b: [1, 2\n", 2, "unterminated flow sequence"},
      {"a: {b: 1,\n  c: 2\n", 1, "unterminated flow mapping"},
      {"a: &anchor 1\n", 1, "anchors ('&') are not supported"},
      {"a: *alias\n", 1, "aliases ('*') are not supported"},
      {"a: !!str 1\n", 1, "tags ('!') are not supported"},
      {"[1, &x 2]", 1, "anchors ('&') are not supported"},
      {"a: 1\n---\nb: 2\n", 2, "multiple documents are not supported"},
      {"---\n---\n", 2, "multiple documents are not supported"},
      {"a: 1\n...\n---\nb: 2\n", 3, "multiple documents are not supported"},
      {"a: 1\n...\nb: 2\n", 3, "content after the document end marker"},
      {"--- a: 1\n", 1, "content on the '---' line is not supported"},
      {"%YAML 1.2\n---\na: 1\n", 1, "directives ('%') are not supported"},
      {"? a\n: b\n", 1, "complex keys ('?') are not supported"},
      {"a: |2\n  x\n", 1, "explicit indentation indicators on block scalars are not supported"},
      {"a: 1\n- b\n", 2, "a mapping and a sequence cannot be mixed"},
      {"- a\nb: 1\n", 2, "a mapping and a sequence cannot be mixed"},
      {"a:\n  b: 1\n  - c\n", 3, "a mapping and a sequence cannot be mixed"},
      {"a: b: c\n", 1, "unexpected ': ' in a plain value"},
      {"a: - b\n", 1, "a block sequence cannot start on the line of its key"},
      {"a: \"x\" y\n", 1, "unexpected text after a quoted string"},
      {"a: [1] 2\n", 1, "unexpected text after a flow collection"},
      {"a: \"\\q\"\n", 1, "unknown escape '\\q'"},
      {"a: \"\\u12\"\n", 1, "bad \\u escape"},
      {"a: \"\\ud83d\"\n", 1, "unpaired surrogate"},
      {"a: 1\nplain line\n", 2, "expected a mapping entry 'key: value'"},
      {": x\n", 1, "empty mapping key"},
      {"hello\nworld\n", 2, "unexpected content after the top-level value"},
      {"[\"a\" \"b\"]", 1, "expected ',' or ']' in a flow sequence"},
      {"[a: 1]", 1, "expected ',' or ']' in a flow sequence"},
      {"{a 1}", 1, "expected ':' after a key in a flow mapping"},
      {"{a: 1 b: 2}", 1, "expected ',' or '}' in a flow mapping"},
      {"[1,,2]", 1, "unexpected ','"},
      {"{[a]: 1}", 1, "flow collections as keys are not supported"},
      {"a: 1\n[b]: 2\n", 2, "flow collections as keys are not supported"},
      {"a: 1\n|b: 2\n", 2, "block scalars cannot be keys"},
      {"[1,# not a comment]", 1, "'#' starts a comment only after whitespace"},
      {"[1, - 2]", 1, "a sequence entry is not allowed here"},
      {"[|\n x]", 1, "block scalars are not allowed inside flow collections"},
      {"a: @x\n", 1, "'@' cannot start a plain scalar"},
      {"a: |x\n", 1, "unexpected text after a block scalar indicator"},
      {std::string(70, '[') + std::string(70, ']'), 1, "nesting too deep"},
  };
  for (const Case& c : cases) {
    const std::string message = ErrorOf(c.yaml);
    EXPECT_NE(message.find("line " + std::to_string(c.line) + ", column "), std::string::npos)
        << "input:\n"
        << c.yaml << "\nmessage: " << message;
    EXPECT_NE(message.find(c.complaint), std::string::npos) << "input:\n"
                                                            << c.yaml << "\nmessage: " << message;
  }
  // The column is reported too (1-based): the duplicate key is the third entry's 'a'.
  EXPECT_EQ(ErrorOf("{a: 1, b: 2, a: 3}"), "line 1, column 14: duplicate key 'a'");
  EXPECT_EQ(ErrorOf("a:\n  x: \"open\n"),
            "line 2, column 6: unterminated double-quoted string "
            "(quoted strings must end on their line)");
}

class StructuredFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = ::testing::TempDir() + "structured_text_test_" + name;
    std::ofstream(path, std::ios::binary) << text;
    written_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& path : written_) std::remove(path.c_str());
  }
  static std::string ErrorOfFile(const std::string& path) {
    try {
      ParseStructuredFile(path);
      return "no error";
    } catch (const std::runtime_error& e) {
      return e.what();
    }
  }
  std::vector<std::string> written_;
};

TEST_F(StructuredFileTest, ReadsByExtension) {
  const std::string expected = Dump(ParseJson(R"({"a": 1, "b": ["x"]})"));
  EXPECT_EQ(Dump(ParseStructuredFile(Write("spec.json", R"({"a": 1, "b": ["x"]})"))), expected);
  EXPECT_EQ(Dump(ParseStructuredFile(Write("spec.yaml", "a: 1\nb:\n- x\n"))), expected);
  EXPECT_EQ(Dump(ParseStructuredFile(Write("spec.YML", "a: 1\nb: [x]\n"))), expected);
  EXPECT_EQ(Dump(ParseStructuredFile(Write("spec.conf", "a: 1\nb: [x]\n"))), expected);
  EXPECT_EQ(Dump(ParseStructuredFile(Write("spec", R"({"a": 1, "b": ["x"]})"))), expected);
}

TEST_F(StructuredFileTest, ErrorsNameThePath) {
  const std::string missing = ::testing::TempDir() + "structured_text_test_missing.yaml";
  EXPECT_EQ(ErrorOfFile(missing), missing + ": cannot read file");
  EXPECT_EQ(ErrorOfFile(::testing::TempDir()), ::testing::TempDir() + ": cannot read file");
  const std::string empty = Write("empty.yaml", "");
  EXPECT_EQ(ErrorOfFile(empty), empty + ": empty file");
  const std::string blank = Write("blank.json", " \n\t\r\n");
  EXPECT_EQ(ErrorOfFile(blank), blank + ": empty file");
  const std::string bad_yaml = Write("bad.yaml", "a: 1\nb:\n  c: [1, 2\n");
  EXPECT_EQ(ErrorOfFile(bad_yaml), bad_yaml + ":3:6: unterminated flow sequence '['");
  const std::string duplicate = Write("duplicate.yml", "a: 1\na: 2\n");
  EXPECT_EQ(ErrorOfFile(duplicate), duplicate + ":2:1: duplicate key 'a'");
  const std::string bad_json = Write("bad.json", "{\n  \"a\": 1,\n  \"b\": x\n}\n");
  const std::string message = ErrorOfFile(bad_json);
  EXPECT_EQ(message.rfind(bad_json + ":3:8: ", 0), 0u) << message;
  EXPECT_EQ(message.find(" at byte "), std::string::npos) << message;
  // A .json file is read as JSON only: YAML block syntax is an error there.
  const std::string block = Write("block.json", "a: 1\n");
  EXPECT_EQ(ErrorOfFile(block).rfind(block + ":1:1: ", 0), 0u) << ErrorOfFile(block);
}

}  // namespace
}  // namespace slim
