#include "base/flags.h"

#include <gtest/gtest.h>

#include <vector>

#include "base/errors.h"

namespace slim::tools {
namespace {

Flags Parse(std::vector<std::string> args) {
  std::vector<char*> argv{const_cast<char*>("cmd")};
  for (auto& a : args) argv.push_back(a.data());
  return Flags(static_cast<int>(argv.size()), argv.data());
}

TEST(Flags, ParsesValuesBooleansAndDefaults) {
  const Flags f = Parse({"--seq-len", "4096", "--json", "--quota=2GiB", "--margin", "0.1"});
  EXPECT_EQ(f.Int("seq-len", -1, 1), 4096);
  EXPECT_TRUE(f.Bool("json"));
  EXPECT_FALSE(f.Bool("verbose"));
  EXPECT_EQ(f.Bytes("quota", -1), int64_t{2} << 30);
  EXPECT_DOUBLE_EQ(f.Double("margin", 0.05), 0.1);
  EXPECT_EQ(f.String("preset", "small"), "small");
  EXPECT_NO_THROW(f.CheckAllUsed());
}

TEST(Flags, ShortAliasesAndALoneDash) {
  std::vector<std::string> args = {"get", "-o", "json", "-h", "-", "-x"};
  std::vector<char*> argv{const_cast<char*>("cmd")};
  for (auto& a : args) argv.push_back(a.data());
  const Flags f(static_cast<int>(argv.size()), argv.data(), {"help"}, {{'o', "output"}, {'h', "help"}});
  EXPECT_EQ(f.String("output", "table"), "json");
  EXPECT_TRUE(f.Bool("help"));
  EXPECT_EQ(f.Positional(0, "command"), "get");
  EXPECT_EQ(f.Positional(1, "spec"), "-");   // stdin, by convention
  EXPECT_EQ(f.Positional(2, "other"), "-x");  // not an alias: positional
}

TEST(Flags, UnknownFlagsSuggestTheClosestAskedFor) {
  const Flags f = Parse({"--limt", "3"});
  (void)f.Int("limit", 50, 1);
  (void)f.String("output", "table");
  try {
    f.CheckAllUsed();
    ADD_FAILURE() << "accepted --limt";
  } catch (const EngineError& e) {
    EXPECT_EQ(std::string(e.what()), "unknown flag --limt (did you mean --limit?)");
  }
  EXPECT_EQ(ClosestMatch("lst", {"list", "get", "watch"}), "list");
  EXPECT_EQ(ClosestMatch("frobnicate", {"list", "get", "watch"}), "");
  EXPECT_EQ(ClosestMatch("ab", {"xy"}), "");  // two edits of two letters is not a typo
}

TEST(Flags, ErrorsNameTheFlag) {
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([] { Parse({}).Int("seq-len", -1, 1); }), "--seq-len is required");
  EXPECT_EQ(message([] { Parse({"--seq-len", "abc"}).Int("seq-len", -1, 1); }), "--seq-len: 'abc' is not an integer");
  EXPECT_EQ(message([] { Parse({"--batch", "0"}).Int("batch", 1, 1); }), "--batch: 0 must be >= 1");
  EXPECT_EQ(message([] { Parse({"--qouta", "1"}).CheckAllUsed(); }), "unknown flag --qouta");
  EXPECT_EQ(message([] { Parse({"stray"}).CheckAllUsed(); }), "unexpected argument 'stray'");
  EXPECT_EQ(message([] { Parse({}).Positional(0, "job id"); }), "job id is required");
  EXPECT_NE(message([] { Parse({"--quota", "2XB"}).Bytes("quota", -1); }).find("unknown unit 'XB'"), std::string::npos);
}

TEST(Flags, PositionalArgumentsAndDeclaredBooleans) {
  std::vector<std::string> args = {"get", "job-1", "--watch", "job-2", "--output", "json"};
  std::vector<char*> argv{const_cast<char*>("slimctl")};
  for (auto& a : args) argv.push_back(a.data());
  const Flags f(static_cast<int>(argv.size()), argv.data(), {"watch"});
  EXPECT_EQ(f.positional_count(), 3u);
  EXPECT_EQ(f.Positional(0, "command"), "get");
  EXPECT_EQ(f.Positional(1, "job id"), "job-1");
  EXPECT_TRUE(f.Bool("watch"));  // did not swallow job-2
  EXPECT_EQ(f.String("output", "table"), "json");
  EXPECT_THROW(f.CheckAllUsed(), EngineError);  // job-2 was never asked for
  EXPECT_EQ(f.Positional(2, "second id"), "job-2");
  EXPECT_NO_THROW(f.CheckAllUsed());
}

TEST(Flags, CommaSeparatedLists) {
  const Flags f = Parse({"--seq-len", "8192,65536", "--mode", "subtract,full", "--quota", "80MiB,1GiB"});
  EXPECT_EQ(f.IntList("seq-len", {1}, 1), (std::vector<int64_t>{8192, 65536}));
  EXPECT_EQ(f.IntList("chunk", {512}, 1), (std::vector<int64_t>{512}));  // default
  EXPECT_EQ(f.List("mode", {}), (std::vector<std::string>{"subtract", "full"}));
  EXPECT_EQ(f.BytesList("quota"), (std::vector<int64_t>{80ll << 20, 1ll << 30}));
  EXPECT_THROW(Parse({"--chunk", "64,,128"}).IntList("chunk", {}, 1), EngineError);
  EXPECT_THROW(Parse({"--chunk", "64,0"}).IntList("chunk", {}, 1), EngineError);
}

TEST(Bytes, UnitsParseAndFormat) {
  EXPECT_EQ(ParseBytes("4096", "q"), 4096);
  EXPECT_EQ(ParseBytes("512MiB", "q"), 512ll << 20);
  EXPECT_EQ(ParseBytes("1.5GB", "q"), 1'500'000'000);
  EXPECT_EQ(ParseBytes("2 KiB", "q"), 2048);
  EXPECT_THROW(ParseBytes("-1", "q"), EngineError);
  EXPECT_THROW(ParseBytes("GiB", "q"), EngineError);
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  // Strict: the whole text is a size. A NUL does not end it early, and neither signs,
  // hexadecimal, leading spaces nor trailing words are read as part of it.
  for (const std::string& bad : {std::string("96MiB\0x", 8), std::string("0x10"), std::string("+5MiB"),
                                std::string(" 5MiB"), std::string("5MiB extra"), std::string("inf"),
                                std::string("1e999"), std::string("5\x1b[31mMiB")}) {
    try {
      ParseBytes(bad, "memory.quota");
      ADD_FAILURE() << "accepted a size of " << bad.size() << " bytes";
    } catch (const EngineError& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind("memory.quota: ", 0), 0u) << message;
      EXPECT_EQ(message.find_first_of(std::string("\0\x1b", 2)), std::string::npos) << "control characters echoed";
    }
  }
  EXPECT_EQ(FormatBytes(100), "100 B");
  EXPECT_EQ(FormatBytes(int64_t{3} << 30), "3.0 GiB");
}

}  // namespace
}  // namespace slim::tools
