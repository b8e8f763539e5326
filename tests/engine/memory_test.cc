// Memory accounting: the counting CPU allocator, its cap, and the SLiM memory invariants
// (peak flat in L at fixed C, growing with C), measured from real allocations.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "base/errors.h"
#include "engine/memory_tracker.h"
#include "engine/model.h"
#include "engine/slim_step.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

class MemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    InstallCpuMemoryTracker();
    SetCpuMemoryCap(0);
  }
  void TearDown() override { SetCpuMemoryCap(0); }
};

TEST_F(MemoryTest, CountsLiveTensorBytes) {
  ASSERT_TRUE(CpuMemoryTrackerInstalled());
  const int64_t before = CpuCurrentBytes();
  ResetCpuPeakBytes();
  {
    at::Tensor t = at::empty({1 << 20}, at::kFloat);  // 4 MiB
    EXPECT_EQ(CpuCurrentBytes() - before, 4 << 20);
    at::Tensor u = t * 2;  // another 4 MiB
    EXPECT_EQ(CpuCurrentBytes() - before, 8 << 20);
  }
  EXPECT_EQ(CpuCurrentBytes(), before);
  // The peak may include a few bytes of scalar temporaries (the wrapped 2).
  EXPECT_GE(CpuPeakBytes() - before, 8 << 20);
  EXPECT_LE(CpuPeakBytes() - before, (8 << 20) + 1024);
  ResetCpuPeakBytes();
  EXPECT_EQ(CpuPeakBytes(), CpuCurrentBytes());
}

TEST_F(MemoryTest, CapThrowsOutOfMemoryAndLeavesProcessUsable) {
  const int64_t base = CpuCurrentBytes();
  SetCpuMemoryCap(base + (16 << 20));
  at::Tensor ok = at::ones({1 << 20}, at::kFloat);  // 4 MiB fits
  EXPECT_THROW(at::empty({8 << 20}, at::kFloat), c10::OutOfMemoryError);  // 32 MiB does not
  EXPECT_EQ(CpuCurrentBytes(), base + (4 << 20));  // the failed request left no trace
  EXPECT_EQ(ok.sum().item<float>(), float(1 << 20));
  SetCpuMemoryCap(0);
  EXPECT_NO_THROW(at::empty({8 << 20}, at::kFloat));
}

TEST_F(MemoryTest, CappedTrainingStepFailsWithOutOfMemory) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  const testing::Batch b = testing::RandomBatch(1, 2048, 256, 2);
  SlimStepOptions o;
  o.chunk_size = 2048;
  SetCpuMemoryCap(CpuCurrentBytes() + (1 << 20));
  try {
    SlimTrainingStep(*model, b.tokens, b.targets, o);
    FAIL() << "expected the cap to stop the step";
  } catch (const EngineError& e) {  // the engine reports the refused allocation as a status
    EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
  SetCpuMemoryCap(0);
  model->zero_grad();
  EXPECT_GT(SlimTrainingStep(*model, b.tokens, b.targets, o).loss, 0.0);
}

// A model big enough that activations dominate the token ids (8 bytes per position).
ModelConfig MemoryProbeConfig() {
  ModelConfig c;
  c.d_model = 128;
  c.n_layers = 2;
  c.n_heads = 4;
  c.d_ff = 512;
  c.feature_map = FeatureMap::kFavorPlus;
  c.n_features = 64;
  c.attention_block = 64;
  return c;
}

int64_t MeasuredStepPeak(PerformerLMImpl& model, int64_t L, int64_t C, StartStateMode mode) {
  const testing::Batch b = testing::RandomBatch(1, L, 256, static_cast<uint64_t>(L));
  SlimStepOptions o;
  o.chunk_size = C;
  o.mode = mode;
  model.zero_grad(/*set_to_none=*/false);  // gradients allocated before, as in training
  ResetCpuPeakBytes();
  SlimTrainingStep(model, b.tokens, b.targets, o);
  return CpuPeakBytes();
}

TEST_F(MemoryTest, PeakIsFlatInSequenceLengthAtFixedChunk) {
  PerformerLM model(MemoryProbeConfig(), 3);
  MeasuredStepPeak(*model, 512, 512, StartStateMode::kSubtract);  // allocate gradients once
  const int64_t C = 256;
  const int64_t p1k = MeasuredStepPeak(*model, 1024, C, StartStateMode::kSubtract);
  const int64_t p4k = MeasuredStepPeak(*model, 4096, C, StartStateMode::kSubtract);
  const int64_t p16k = MeasuredStepPeak(*model, 16384, C, StartStateMode::kSubtract);
  std::printf("[ memory ] C=%lld subtract: L=1k %lld, 4k %lld, 16k %lld bytes\n",
              static_cast<long long>(C), static_cast<long long>(p1k), static_cast<long long>(p4k),
              static_cast<long long>(p16k));
  EXPECT_LE(p16k, p1k * 1.10);
  EXPECT_LE(p4k, p1k * 1.10);
  // Ordinary backprop over the same lengths grows with L: the measurement is not a constant.
  const int64_t full1k = MeasuredStepPeak(*model, 1024, 1024, StartStateMode::kSubtract);
  const int64_t full4k = MeasuredStepPeak(*model, 4096, 4096, StartStateMode::kSubtract);
  std::printf("[ memory ] full backprop: L=1k %lld, 4k %lld bytes\n", static_cast<long long>(full1k),
              static_cast<long long>(full4k));
  EXPECT_GT(full4k, full1k * 2);
  EXPECT_GT(full1k, p1k);
}

TEST_F(MemoryTest, PeakGrowsWithChunkSize) {
  PerformerLM model(MemoryProbeConfig(), 4);
  MeasuredStepPeak(*model, 512, 512, StartStateMode::kSubtract);
  const int64_t L = 4096;
  const int64_t p128 = MeasuredStepPeak(*model, L, 128, StartStateMode::kSubtract);
  const int64_t p512 = MeasuredStepPeak(*model, L, 512, StartStateMode::kSubtract);
  const int64_t p2048 = MeasuredStepPeak(*model, L, 2048, StartStateMode::kSubtract);
  std::printf("[ memory ] L=%lld: C=128 %lld, 512 %lld, 2048 %lld bytes\n", static_cast<long long>(L),
              static_cast<long long>(p128), static_cast<long long>(p512), static_cast<long long>(p2048));
  EXPECT_LT(p128, p512);
  EXPECT_LT(p512, p2048);
  // Activations scale with C: going from 512 to 2048 adds more than going from 128 to 512.
  EXPECT_GT(p2048 - p512, p512 - p128);
  // Stored boundaries cost O(L/C · state) on top of subtraction.
  EXPECT_GT(MeasuredStepPeak(*model, L, 128, StartStateMode::kBoundaries), p128);
}

}  // namespace
}  // namespace slim
