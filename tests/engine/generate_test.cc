// Recurrent generation: greedy decoding agrees with re-running the full forward pass on the
// growing sequence, sampling is deterministic per seed, bad prompts are refused.
#include "engine/generate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "base/errors.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

TEST(Generate, GreedyMatchesFullForwardArgmax) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 3);
  model->to(at::kDouble);  // ties in argmax are then practically impossible
  const std::vector<int32_t> prompt{'H', 'e', 'l', 'l', 'o'};
  SamplingOptions o;
  o.max_new_tokens = 12;
  o.temperature = 0;
  o.prompt_chunk = 2;  // the prompt crosses slice boundaries
  const std::vector<int32_t> got = GenerateTokens(*model, prompt, o);
  ASSERT_EQ(got.size(), 12u);
  std::vector<int64_t> seq(prompt.begin(), prompt.end());
  at::NoGradGuard no_grad;
  for (int32_t token : got) {
    const at::Tensor logits = model->Forward(at::tensor(seq, at::kLong).view({1, -1}));
    EXPECT_EQ(logits[0][-1].argmax().item<int64_t>(), token);
    seq.push_back(token);
  }
}

TEST(Generate, SamplingIsDeterministicPerSeed) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 4);
  SamplingOptions o;
  o.max_new_tokens = 40;
  o.temperature = 1.0;
  o.top_k = 50;
  o.seed = 7;
  std::vector<int32_t> streamed;
  const std::vector<int32_t> a = GenerateTokens(*model, {'a'}, o, [&](int32_t t) { streamed.push_back(t); });
  EXPECT_EQ(a, streamed);
  EXPECT_EQ(GenerateTokens(*model, {'a'}, o), a);
  o.seed = 8;
  EXPECT_NE(GenerateTokens(*model, {'a'}, o), a);
  o.top_k = 1;  // top-1 sampling is greedy
  SamplingOptions greedy = o;
  greedy.temperature = 0;
  EXPECT_EQ(GenerateTokens(*model, {'a'}, o), GenerateTokens(*model, {'a'}, greedy));
}

TEST(Generate, RefusesBadPrompts) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 5);
  EXPECT_THROW(GenerateTokens(*model, {}, {}), EngineError);
  EXPECT_THROW(GenerateTokens(*model, {256}, {}), EngineError);
  SamplingOptions o;
  o.temperature = -1;
  EXPECT_THROW(GenerateTokens(*model, {1}, o), EngineError);
}

}  // namespace
}  // namespace slim
