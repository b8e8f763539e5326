// Model files: bit-exact round trip, and refusal of files that are truncated, malformed or do
// not match their config.
#include "engine/model_file.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>
#include <limits>
#include <memory>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/errors.h"
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

// A learned feature map: its projections are parameters saved with the model; under LoRA they
// train beside the adapters and travel in the adapter file, so base + adapter computes what the
// trained model did.
TEST(ModelFile, LearnedFeatureMapsTrainWithLoraAndTravelInAdapters) {
  ModelConfig c = testing::TinyConfig(FeatureMap::kLearned);
  c.n_features = 8;
  PerformerLM model(c, 3);
  const std::string path = testing::TempPath("learned");
  SaveModelFile(*model, path);
  PerformerLM loaded = LoadModelFile(path);
  EXPECT_TRUE(at::equal(model->named_parameters()["layers.1.features"], loaded->named_parameters()["layers.1.features"]));
  EXPECT_EQ(c.ParameterCount(), [&] {
    int64_t n = 0;
    for (const at::Tensor& p : model->parameters()) n += p.numel();
    return n;
  }());

  loaded->EnableLora(4, 8.0);
  for (const auto& p : loaded->named_parameters()) {
    EXPECT_EQ(p.value().requires_grad(), IsTrainedWithAdapters(p.key())) << p.key();
  }
  EXPECT_TRUE(loaded->named_parameters()["layers.0.features"].requires_grad());
  {
    at::NoGradGuard no_grad;  // as after training: adapters and feature maps moved
    for (auto& p : loaded->named_parameters()) {
      if (IsTrainedWithAdapters(p.key())) p.value().add_(0.01);
    }
  }
  const std::string adapter = testing::TempPath("learned-adapter");
  SaveLoraAdapter(*loaded, adapter);
  PerformerLM base = LoadModelFile(path);
  LoadLoraAdapter(adapter, *base);
  const at::Tensor tokens = testing::RandomBatch(1, 30, 256, 4).tokens;
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(base->Forward(tokens), loaded->Forward(tokens)));
  EXPECT_FALSE(at::equal(base->Forward(tokens), model->Forward(tokens)));
  std::remove(path.c_str());
  std::remove(adapter.c_str());
}

// The architecture variants survive a save and load; the original layout's files carry no
// variant keys (so they stay byte for byte as before them).
TEST(ModelFile, ArchitectureVariantsRoundTrip) {
  for (const ModelConfig& c : testing::VariantConfigs()) {
    PerformerLM model(c, 3);
    testing::PerturbParameters(*model, 4);
    const std::string path = testing::TempPath("variant");
    SaveModelFile(*model, path);
    PerformerLM loaded = LoadModelFile(path);
    EXPECT_EQ(loaded->config().norm, c.norm) << testing::Describe(c);
    EXPECT_EQ(loaded->config().ffn, c.ffn);
    EXPECT_EQ(loaded->config().norm_eps, c.norm_eps);
    EXPECT_EQ(loaded->config().kv_heads(), c.kv_heads());
    EXPECT_EQ(loaded->config().qkv_bias, c.qkv_bias);
    EXPECT_EQ(loaded->config().attn_out_bias, c.attn_out_bias);
    EXPECT_EQ(loaded->config().positions, c.positions);
    EXPECT_EQ(loaded->config().max_positions, c.max_positions);
    const at::Tensor tokens = testing::RandomBatch(1, 30, 256, 4).tokens;
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(model->Forward(tokens), loaded->Forward(tokens))) << testing::Describe(c);
    std::remove(path.c_str());
  }
  PerformerLM original(testing::TinyConfig(FeatureMap::kFavorPlus), 3);
  const std::string path = testing::TempPath("original");
  SaveModelFile(*original, path);
  const std::string bytes = testing::ReadFileBytes(path);
  for (const char* key : {"\"norm\"", "\"norm_eps\"", "\"ffn\"", "\"n_kv_heads\"", "\"qkv_bias\"",
                          "\"attn_out_bias\"", "\"positions\"", "\"max_positions\""}) {
    EXPECT_EQ(bytes.find(key), std::string::npos) << key << " in a file of the original layout";
  }
  std::remove(path.c_str());
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
  EXPECT_NE(LoadError(bad).find("header size field points past the end"), std::string::npos);
  // A text file: its first 8 bytes are not echoed as a number (they would reveal its content).
  testing::WriteFileBytes(bad, "root:$6$secretsalt$hash:19000:0:99999:7:::\n");
  EXPECT_EQ(LoadError(bad).find(std::to_string(0x2436243a746f6f72ull)), std::string::npos) << LoadError(bad);
  EXPECT_NE(LoadError(bad).find("not a safetensors file"), std::string::npos) << LoadError(bad);
  // A FIFO would block an open() until someone writes to it; it is refused without opening.
  const std::string fifo = testing::TempPath("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(LoadError(fifo).find("not a regular file"), std::string::npos) << LoadError(fifo);
  std::remove(fifo.c_str());

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
// A model whose weights hold NaN or Inf (a diverged run, a broken export) is refused on load
// with the tensor named, so imports and jobs never start from it (issue 18).
TEST(ModelFile, NonFiniteWeightsAreRefusedByName) {
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 3);
    {
      at::NoGradGuard no_grad;
      model->named_parameters()["layers.1.wv.weight"].view(-1)[5] = bad;
    }
    const std::string path = testing::TempPath("nonfinite");
    SaveModelFile(*model, path);
    EXPECT_NE(LoadError(path).find("tensor 'layers.1.wv.weight' has 1 non-finite values (NaN or Inf)"), std::string::npos)
        << LoadError(path);
    std::remove(path.c_str());
  }
}

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

// The tokenizer travels as metadata "tokenizer" (its kind) and a U8 tensor "tokenizer" (its file),
// through model files, checkpoints and merges; files without one load as before.
TEST(ModelFile, CarriesItsTokenizer) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 2);
  const std::string plain = testing::TempPath("no-tokenizer");
  SaveModelFile(*model, plain);
  EXPECT_EQ(LoadModelFile(plain)->tokenizer_file(), nullptr);
  EXPECT_EQ(ReadSafetensors(plain, "model file").metadata.count("tokenizer"), 0u);

  const std::string bytes("{\"model\": {\"type\": \"BPE\"}}\0\xFF", 30);
  model->set_tokenizer_file(std::make_shared<TokenizerFile>(TokenizerFile{TokenizerKind::kSentencePiece, bytes}));
  const std::string path = testing::TempPath("tokenizer");
  SaveModelFile(*model, path);
  PerformerLM loaded = LoadModelFile(path);
  ASSERT_NE(loaded->tokenizer_file(), nullptr);
  EXPECT_EQ(loaded->tokenizer_file()->kind, TokenizerKind::kSentencePiece);
  EXPECT_EQ(loaded->tokenizer_file()->bytes, bytes);
  const SafetensorsContents file = ReadSafetensors(path, "model file");
  EXPECT_EQ(file.metadata.at("tokenizer"), "sentencepiece");
  EXPECT_EQ(file.tensors.at("tokenizer").scalar_type(), at::kByte);
  EXPECT_EQ(file.tensors.at("tokenizer").numel(), 30);
  // Weights are unchanged by it.
  auto a = model->named_parameters(), b = loaded->named_parameters();
  for (const auto& p : a) EXPECT_TRUE(at::equal(p.value(), b[p.key()])) << p.key();
  model->EnableLora(2, 4.0);
  EXPECT_EQ(model->MergedCopy()->tokenizer_file(), model->tokenizer_file());

  // Half a tokenizer, or one of an unknown kind, is refused by name.
  auto rewrite = [&](const std::function<void(SafetensorsContents&)>& edit) {
    SafetensorsContents c = ReadSafetensors(path, "model file");
    edit(c);
    WriteSafetensors(path + ".bad", c.metadata, c.tensors);
    return LoadError(path + ".bad");
  };
  EXPECT_NE(rewrite([](SafetensorsContents& c) { c.metadata.erase("tokenizer"); }).find("no 'tokenizer' metadata"),
            std::string::npos);
  EXPECT_NE(rewrite([](SafetensorsContents& c) { c.tensors.erase("tokenizer"); }).find("there is no tensor 'tokenizer'"),
            std::string::npos);
  EXPECT_NE(rewrite([](SafetensorsContents& c) { c.metadata["tokenizer"] = "wordpiece"; })
                .find("unknown tokenizer kind 'wordpiece'"),
            std::string::npos);
  EXPECT_NE(rewrite([](SafetensorsContents& c) { c.tensors["tokenizer"] = at::zeros({2, 3}, at::kByte); })
                .find("must be non-empty U8 bytes"),
            std::string::npos);
  for (const std::string& f : {plain, path, path + ".bad"}) std::remove(f.c_str());
}

// A small file whose metadata declares a huge config is refused before the model is built:
// building it first (as the loader did) allocates the declared embeddings alone — 2^24 × 65536
// floats, 4 TiB — and fails with an allocator error instead of naming the problem.
TEST(ModelFile, HugeConfigOverSmallDataIsRefusedBeforeAllocating) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  SafetensorsMetadata meta = ModelConfigMetadata(model->config());
  meta["vocab_size"] = std::to_string(1 << 24);
  meta["d_model"] = "65536";
  meta["n_heads"] = "1";
  meta["d_ff"] = std::to_string(1 << 20);
  meta["n_layers"] = "1024";
  const std::string path = testing::TempPath("huge");
  WriteSafetensors(path, meta, ModelTensors(*model));
  const std::string error = LoadError(path);
  EXPECT_NE(error.find("tensor 'embed.weight' has shape [256, 32] but the config needs [16777216, 65536]"),
            std::string::npos)
      << error;
  std::remove(path.c_str());
}

// The config keys in a model file's metadata are read strictly: trailing text, a boolean that
// is neither true nor false, a negative seed are refused by name.
TEST(ModelFile, MetadataValuesAreReadStrictly) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  const std::string path = testing::TempPath("strict");
  struct Case {
    const char* key;
    const char* value;
    const char* expected;
  };
  for (const Case& c : {Case{"rope_base", "10000x", "metadata 'rope_base' is not a number: '10000x'"},
                        Case{"rope_base", "nan", "rope_base: nan must be > 1"},
                        Case{"tie_embeddings", "yes", "metadata 'tie_embeddings' is 'yes', not true or false"},
                        Case{"feature_seed", "-1", "metadata 'feature_seed' is not an unsigned 64-bit integer"},
                        Case{"feature_seed", "18446744073709551616", "is not an unsigned 64-bit integer"},
                        Case{"d_model", "32.5", "metadata 'd_model' is not an integer: '32.5'"}}) {
    SafetensorsMetadata meta = ModelConfigMetadata(model->config());
    meta[c.key] = c.value;
    WriteSafetensors(path, meta, ModelTensors(*model));
    const std::string error = LoadError(path);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.key << "=" << c.value << ": " << error;
  }
  std::remove(path.c_str());
}

// An adapter's lora_alpha must be a whole finite number > 0 ("inf" made every output infinite).
TEST(ModelFile, AdapterAlphaMustBeAFiniteNumber) {
  PerformerLM adapted(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  adapted->EnableLora(2, 4.0);
  const std::string path = testing::TempPath("adapter");
  SaveLoraAdapter(*adapted, path);
  const SafetensorsContents good = ReadSafetensors(path, "test");
  for (const char* alpha : {"inf", "4x", "", "-1"}) {
    SafetensorsMetadata meta = good.metadata;
    meta["lora_alpha"] = alpha;
    WriteSafetensors(path, meta, good.tensors);
    PerformerLM base(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
    try {
      LoadLoraAdapter(path, *base);
      ADD_FAILURE() << "accepted lora_alpha '" << alpha << "'";
    } catch (const EngineError& e) {
      EXPECT_NE(std::string(e.what()).find("lora_alpha"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(base->lora_enabled());
  }
  std::remove(path.c_str());
}

// A safetensors file is 8 bytes of little-endian header size, the JSON header, the data.
std::string RawSafetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(header.size()) >> (8 * i));
  return out + header + data;
}

// Hostile headers are refused by name before any tensor is allocated: shapes whose byte size
// overflows (which used to wrap around to match the offsets and reach the allocator),
// fractional, negative or non-list shapes, offsets that are not whole numbers, too many
// dimensions, and overlapping tensors (checked before allocating, so a header listing the same
// bytes many times cannot multiply the memory used).
TEST(Safetensors, HostileHeadersAreRefusedByName) {
  const std::string path = testing::TempPath("hostile");
  struct Case {
    std::string header, expected;
  };
  const std::string dims33 = "[1" + [] { std::string s; for (int i = 0; i < 32; ++i) s += ",1"; return s; }() + "]";
  const std::vector<Case> cases = {
      {R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
       "tensor 't' has a shape too large for any file"},
      {R"({"t":{"dtype":"U8","shape":[9007199254740992,9007199254740992,0],"data_offsets":[0,0]}})",
       "tensor 't' has a shape too large for any file"},  // empty, but LibTorch's size product overflows
      {R"({"t":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}})", ""},  // valid: empty tensor at the end
      {R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})",
       "tensor 't' has a bad shape"},  // beyond 2^53
      {R"({"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "tensor 't' has a bad shape: [1.5]"},
      {R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "tensor 't' has a bad shape"},
      {R"({"t":{"dtype":"U8","shape":4,"data_offsets":[0,4]}})", "tensor 't' has a shape that is not a list"},
      {R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,1e300]}})", "tensor 't' has bad data_offsets"},
      {R"({"t":{"dtype":"U8","shape":[4],"data_offsets":["0",4]}})", "tensor 't' has bad data_offsets"},
      {R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4,8]}})", "tensor 't' has bad data_offsets"},
      {R"({"t":{"dtype":7,"shape":[4],"data_offsets":[0,4]}})", "tensor 't' has unsupported dtype 7"},
      {R"({"t":{"dtype":"U8","shape":)" + dims33 + R"(,"data_offsets":[0,1]}})", "has 33 dimensions (at most 32)"},
      {R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
       "tensors 'a' and 'b' overlap at data offset 2"},
      {R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}} )", ""},  // valid: the baseline
  };
  for (const Case& c : cases) {
    testing::WriteFileBytes(path, RawSafetensors(c.header, std::string(8, 'x')));
    try {
      ReadSafetensors(path, "model file");
      EXPECT_EQ(c.expected, "") << c.header;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(c.expected, "") << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    }
  }
  std::remove(path.c_str());
}

TEST(ModelFile, LoraModelsMustBeMergedFirst) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 1);
  model->EnableLora(2, 4.0);
  EXPECT_THROW(SaveModelFile(*model, testing::TempPath("lora")), EngineError);
}

}  // namespace
}  // namespace slim
