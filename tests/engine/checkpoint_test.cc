// Checkpoints: training resumed from a checkpoint continues bit for bit like the uninterrupted
// run; damaged checkpoints are refused; a failed write is reported.
#include "engine/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "base/errors.h"
#include "engine/slim_step.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {


// One training step on batch `step` of a fixed, seeded sequence of batches.
double TrainStep(PerformerLMImpl& model, torch::optim::Optimizer& opt, int step) {
  const testing::Batch b = testing::RandomBatch(2, 64, 256, 100 + step);
  SlimStepOptions o;
  o.chunk_size = 16;
  opt.zero_grad();
  const double loss = SlimTrainingStep(model, b.tokens, b.targets, o).loss;
  opt.step();
  return loss;
}

TEST(Checkpoint, KeepsTheModelsTokenizer) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  model->set_tokenizer_file(std::make_shared<TokenizerFile>(TokenizerFile{TokenizerKind::kHfJson, "{\"model\": {}}"}));
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2));
  const std::string path = testing::TempPath("tokenizer.ckpt");
  SaveCheckpoint(path, *model, opt, {{"step", "0"}});
  const Checkpoint c = ReadCheckpoint(path);
  ASSERT_NE(c.model->tokenizer_file(), nullptr);
  EXPECT_EQ(c.model->tokenizer_file()->kind, TokenizerKind::kHfJson);
  EXPECT_EQ(c.model->tokenizer_file()->bytes, "{\"model\": {}}");
  std::remove(path.c_str());
}

TEST(Checkpoint, ResumeContinuesBitForBit) {
  const ModelConfig config = testing::TinyConfig(FeatureMap::kFavorPlus);
  std::vector<double> uninterrupted;
  PerformerLM a(config, 1);
  torch::optim::AdamW opt_a(a->parameters(), torch::optim::AdamWOptions(1e-2));
  for (int s = 0; s < 4; ++s) uninterrupted.push_back(TrainStep(*a, opt_a, s));

  PerformerLM b(config, 1);
  torch::optim::AdamW opt_b(b->parameters(), torch::optim::AdamWOptions(1e-2));
  for (int s = 0; s < 2; ++s) EXPECT_EQ(TrainStep(*b, opt_b, s), uninterrupted[s]);
  const std::string path = testing::TempPath("resume");
  SaveCheckpoint(path, *b, opt_b, {{"step", "2"}, {"data_position", "2"}});

  Checkpoint c = ReadCheckpoint(path);
  EXPECT_EQ(c.progress.at("step"), "2");
  EXPECT_EQ(c.progress.at("data_position"), "2");
  torch::optim::AdamW opt_c(c.model->parameters(), torch::optim::AdamWOptions(1e-2));
  RestoreOptimizer(c, opt_c, at::kCPU);
  for (int s = 2; s < 4; ++s) EXPECT_EQ(TrainStep(*c.model, opt_c, s), uninterrupted[s]) << "step " << s;
  auto pa = a->named_parameters(), pc = c.model->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(at::equal(p.value(), pc[p.key()])) << p.key();
  std::remove(path.c_str());
}

TEST(Checkpoint, DamagedCheckpointsAreRefusedAndFailedWritesReportErrors) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kSquare), 2);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  TrainStep(*model, opt, 0);
  const std::string path = testing::TempPath("good");
  SaveCheckpoint(path, *model, opt, {{"step", "1"}});
  const std::string bytes = testing::ReadFileBytes(path);

  auto error_of = [](const std::string& p) {
    try {
      ReadCheckpoint(p);
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string bad = testing::TempPath("bad");
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x01;
  testing::WriteFileBytes(bad, flipped);
  EXPECT_NE(error_of(bad).find("corrupted"), std::string::npos) << error_of(bad);
  testing::WriteFileBytes(bad, bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(error_of(bad).find("truncated"), std::string::npos) << error_of(bad);
  EXPECT_EQ(error_of(bad).rfind("checkpoint " + bad, 0), 0u);

  // Writing into a directory that does not exist fails cleanly...
  try {
    SaveCheckpoint(::testing::TempDir() + "/no/such/dir/x.ckpt", *model, opt, {});
    ADD_FAILURE() << "expected a write error";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInternal);
  }
  // ...and overwriting goes through a temporary file, so the old checkpoint is whole until the
  // rename; afterwards the new one reads back.
  TrainStep(*model, opt, 1);
  SaveCheckpoint(path, *model, opt, {{"step", "2"}});
  EXPECT_EQ(ReadCheckpoint(path).progress.at("step"), "2");
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

}  // namespace
}  // namespace slim
