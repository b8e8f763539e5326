// Model files: bit-exact round trip, and refusal of files that are truncated, malformed or do
// not match their config.
#include "engine/model_file.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/errors.h"
#include "engine/safetensors.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {




// The error's message, which must name the problem.
std::string LoadError(const std::string& path) {
  try {
    LoadModelFile(path);
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  return "loaded without error";
}

TEST(ModelFile, RoundTripIsBitExact) {
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    ModelConfig c = testing::TinyConfig(FeatureMap::kFavorPlus);
    c.feature_seed = 7;
    PerformerLM model(c, 3);
    model->to(dtype);
    model->RedrawFeatures(5);  // the current projection, not draw 0, must be what is stored
    const std::string path = testing::TempPath("roundtrip");
    SaveModelFile(*model, path);
    PerformerLM loaded = LoadModelFile(path);
    EXPECT_EQ(loaded->config().d_model, c.d_model);
    EXPECT_EQ(loaded->config().feature_seed, 7u);
    EXPECT_EQ(loaded->activation_dtype(), dtype);
    auto a = model->named_parameters(), b = loaded->named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (const auto& p : a) EXPECT_TRUE(at::equal(p.value(), b[p.key()])) << p.key();
    EXPECT_TRUE(at::equal(model->projection(), loaded->projection()));
    const at::Tensor tokens = testing::RandomBatch(1, 30, 256, 4).tokens;
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(model->Forward(tokens), loaded->Forward(tokens)));
    // Saving the loaded model gives the same bytes.
    const std::string again = testing::TempPath("roundtrip2");
    SaveModelFile(*loaded, again);
    EXPECT_EQ(testing::ReadFileBytes(path), testing::ReadFileBytes(again));
    std::remove(path.c_str());
    std::remove(again.c_str());
  }
}

TEST(ModelFile, RefusesTruncatedMalformedAndMismatchedFiles) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 1);
  const std::string path = testing::TempPath("good"), bad = testing::TempPath("bad");
  SaveModelFile(*model, path);
  const std::string bytes = testing::ReadFileBytes(path);

  testing::WriteFileBytes(bad, bytes.substr(0, bytes.size() - 100));
  EXPECT_NE(LoadError(bad).find("truncated"), std::string::npos) << LoadError(bad);
  testing::WriteFileBytes(bad, bytes.substr(0, 5));
  EXPECT_NE(LoadError(bad).find("truncated"), std::string::npos);
  testing::WriteFileBytes(bad, std::string(8, '\xff') + bytes.substr(8));
  EXPECT_NE(LoadError(bad).find("header size"), std::string::npos);

  std::string broken = bytes;
  broken[9] = '[';  // the header's opening brace
  testing::WriteFileBytes(bad, broken);
  EXPECT_NE(LoadError(bad).find("header"), std::string::npos) << LoadError(bad);

  // Any edit of a written file — header or data — is caught by the checksum.
  std::string edited = bytes;
  const size_t at = edited.find("\"d_ff\":\"64\"");
  ASSERT_NE(at, std::string::npos);
  edited.replace(at, 11, "\"d_ff\":\"65\"");
  testing::WriteFileBytes(bad, edited);
  EXPECT_NE(LoadError(bad).find("corrupted"), std::string::npos) << LoadError(bad);
  std::string flipped = bytes;
  flipped[flipped.size() - 7] ^= 0x10;
  testing::WriteFileBytes(bad, flipped);
  EXPECT_NE(LoadError(bad).find("corrupted"), std::string::npos) << LoadError(bad);

  // Internally consistent files that do not match their config are refused by name.
  SafetensorsMetadata meta = ReadSafetensors(path, "test").metadata;
  NamedTensorMap tensors = ReadSafetensors(path, "test").tensors;
  meta["d_ff"] = "65";
  WriteSafetensors(bad, meta, tensors);
  const std::string error = LoadError(bad);
  EXPECT_NE(error.find("shape"), std::string::npos) << error;
  EXPECT_NE(error.find("layers.0.w1"), std::string::npos) << error;
  meta["d_ff"] = "64";
  tensors["ln_g.weight"] = tensors.at("ln_f.weight");
  WriteSafetensors(bad, meta, tensors);
  EXPECT_NE(LoadError(bad).find("unexpected tensor 'ln_g.weight'"), std::string::npos) << LoadError(bad);
  tensors.erase("ln_g.weight");
  tensors.erase("ln_f.bias");
  WriteSafetensors(bad, meta, tensors);
  EXPECT_NE(LoadError(bad).find("missing tensor 'ln_f.bias'"), std::string::npos) << LoadError(bad);

  EXPECT_NE(LoadError(testing::TempPath("absent")).find("cannot open"), std::string::npos);
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

// The file is plain safetensors: a reader written from the format description (Python standard
// library only) parses it, and the first value it reads equals the model's.
TEST(ModelFile, ReadableByAPlainSafetensorsReader) {
  if (std::system("python3 -c 'import json, struct' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 2);
  const std::string path = testing::TempPath("python");
  SaveModelFile(*model, path);
  const std::string out = ::testing::TempDir() + "/python-read." + std::to_string(::getpid()) + ".txt";
  const std::string cmd = "python3 " SLIM_SOURCE_DIR "/tests/engine/read_safetensors.py " + path + " > " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << testing::ReadFileBytes(out);
  const std::string text = testing::ReadFileBytes(out);
  EXPECT_NE(text.find("ok: " + std::to_string(model->named_parameters().size() + 1) + " tensors"), std::string::npos) << text;
  char expected[64];
  std::snprintf(expected, sizeof(expected), "ln_f.weight F32 [32] first=%.1f", model->named_parameters()["ln_f.weight"][0].item<float>());
  EXPECT_NE(text.find(expected), std::string::npos) << text;
  std::remove(path.c_str());
  std::remove(out.c_str());
}

TEST(ModelFile, LoraModelsMustBeMergedFirst) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 1);
  model->EnableLora(2, 4.0);
  EXPECT_THROW(SaveModelFile(*model, testing::TempPath("lora")), EngineError);
}

}  // namespace
}  // namespace slim
