// The engine on a GPU (issue 19): each test skips where this build or machine has no CUDA, so
// the file compiles and is listed everywhere and runs on the GPU machine (scripts/gpu-check.sh).
// The same ATen attention path is checked on the CPU by the TorchPath tests in attention_test.cc
// and slim_step_test.cc; here it runs on CUDA against the CPU's results, with random and trained
// weights, and the CUDA-only parts (caps, statistics, devices) are exercised.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/optim/adamw.h>

#include <cstdio>
#include <map>
#include <string>

#include "base/errors.h"
#include "engine/causal_attention.h"
#include "engine/checkpoint.h"
#include "engine/devices.h"
#include "engine/model.h"
#include "engine/model_file.h"
#include "engine/runtime.h"
#include "engine/slim_step.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

using testing::RelErr;
using Grads = std::map<std::string, at::Tensor>;

#define SKIP_WITHOUT_CUDA()                                                              \
  if (!CudaBuild() || !CudaAvailable()) GTEST_SKIP() << "no CUDA in this build or machine"

const c10::Device kCuda(c10::DeviceType::CUDA, 0);

TEST(Cuda, DevicesAndParsing) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  EXPECT_EQ(ParseDevice("cuda"), kCuda);
  EXPECT_EQ(ParseDevice("cuda:" + std::to_string(n - 1)).index(), n - 1);
  try {
    ParseDevice("cuda:" + std::to_string(n));
    ADD_FAILURE() << "cuda:" << n << " accepted on a machine with " << n << " devices";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  int64_t gpus = 0;
  for (const DeviceInfo& d : DiscoverDevices()) {
    if (d.kind != "cuda") continue;
    ++gpus;
    EXPECT_GT(d.total_bytes, 0) << d.name;
    EXPECT_GT(d.free_bytes, 0) << d.name;
  }
  EXPECT_EQ(gpus, n);
  const WorkerFootprint f = MeasureWorkerFootprint("cuda:0");
  EXPECT_GT(f.bytes, 64ll << 20) << f.method;  // a CUDA context alone is hundreds of MiB
  std::printf("cuda:0 worker footprint %lld bytes (%s)\n", static_cast<long long>(f.bytes), f.method.c_str());
}

// Attention on CUDA equals attention on the CPU (fp64): outputs, end states, all gradients.
TEST(Cuda, AttentionMatchesCpuFp64) {
  SKIP_WITHOUT_CUDA();
  at::Generator g = testing::Gen(3);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::exp(at::randn({2, 3, 50, 6}, g, opt) * 0.5), k = at::exp(at::randn({2, 3, 50, 6}, g, opt) * 0.5);
  const at::Tensor v = at::randn({2, 3, 50, 4}, g, opt), s = at::randn({2, 3, 6, 4}, g, opt);
  const at::Tensor z = at::exp(at::randn({2, 3, 6}, g, opt)), g_out = at::randn({2, 3, 50, 4}, g, opt);
  std::vector<at::Tensor> grads[2];
  at::Tensor outs[2];
  const c10::Device devices[2] = {c10::Device(c10::DeviceType::CPU), kCuda};
  for (int i = 0; i < 2; ++i) {
    std::vector<at::Tensor> leaves;
    for (const at::Tensor& t : {q, k, v, s, z}) leaves.push_back(t.to(devices[i]).requires_grad_());
    const AttentionOutput o = CausalLinearAttention(leaves[0], leaves[1], leaves[2], {leaves[3], leaves[4]}, 16);
    torch::autograd::backward({o.out}, {g_out.to(devices[i])});
    outs[i] = o.out.cpu();
    for (const at::Tensor& l : leaves) grads[i].push_back(l.grad().cpu());
  }
  EXPECT_LE(RelErr(outs[1], outs[0]), 1e-12);
  for (size_t j = 0; j < grads[0].size(); ++j) EXPECT_LE(RelErr(grads[1][j], grads[0][j]), 1e-11) << "input " << j;
}

Grads StepGrads(PerformerLMImpl& model, const testing::Batch& b, int64_t C, StartStateMode mode,
                Precision precision, double* loss) {
  model.zero_grad(/*set_to_none=*/true);
  SlimStepOptions o;
  o.chunk_size = C;
  o.mode = mode;
  o.precision = precision;
  const c10::Device device = model.parameters().front().device();
  *loss = SlimTrainingStep(model, b.tokens.to(device), b.targets.to(device), o).loss;
  Grads grads;
  for (const auto& p : model.named_parameters()) grads[p.key()] = p.value().grad().cpu().clone();
  return grads;
}

double MaxRelErr(const Grads& got, const Grads& want) {
  double m = 0;
  for (const auto& [name, g] : want) m = std::max(m, RelErr(got.at(name), g));
  return m;
}

// SLiM = full backprop on CUDA: fp64 random weights within 1e-9; fp32 on the shipped trained
// model (real text) within 1e-4, the bounds of the CPU's tests.
TEST(Cuda, SlimStepEqualsFullBackprop) {
  SKIP_WITHOUT_CUDA();
  {
    PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 11);
    model->to(kCuda, at::kDouble);
    const testing::Batch b = testing::RandomBatch(2, 64, 256, 12, /*pad_tail=*/9);
    double full_loss = 0, loss = 0;
    const Grads full = StepGrads(*model, b, 64, StartStateMode::kSubtract, Precision::kFp32, &full_loss);
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {int64_t{1}, int64_t{16}, int64_t{37}}) {
        EXPECT_LE(MaxRelErr(StepGrads(*model, b, C, mode, Precision::kFp32, &loss), full), 1e-9)
            << StartStateModeName(mode) << " C=" << C;
        EXPECT_NEAR(loss, full_loss, 1e-12 * std::abs(full_loss));
      }
    }
  }
  PerformerLM trained = LoadModelFile(std::string(SLIM_SOURCE_DIR) + "/models/base-mini.safetensors");
  trained->to(kCuda);
  const std::string text = testing::ReadFileBytes(std::string(SLIM_SOURCE_DIR) + "/docs/engine.md");
  const int64_t L = 260;
  at::Tensor ids = at::empty({1, L + 1}, at::kLong);
  for (int64_t i = 0; i <= L; ++i) ids[0][i] = static_cast<int64_t>(static_cast<unsigned char>(text[i]));
  const testing::Batch b{ids.narrow(1, 0, L).contiguous(), ids.narrow(1, 1, L).contiguous()};
  double full_loss = 0, loss = 0;
  const Grads full = StepGrads(*trained, b, L, StartStateMode::kSubtract, Precision::kFp32, &full_loss);
  for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
    for (int64_t C : {int64_t{7}, int64_t{64}, L - 1}) {
      EXPECT_LE(MaxRelErr(StepGrads(*trained, b, C, mode, Precision::kFp32, &loss), full), 1e-4)
          << "trained " << StartStateModeName(mode) << " C=" << C;
      EXPECT_NEAR(loss, full_loss, 1e-5 * std::abs(full_loss));
    }
  }
  // bf16 autocast tracks fp32 (a loose bound: bf16 has 8 bits of mantissa) and SLiM in bf16
  // tracks the one-slice bf16 step.
  double bf16_full = 0, bf16_sliced = 0;
  StepGrads(*trained, b, L, StartStateMode::kSubtract, Precision::kBf16, &bf16_full);
  StepGrads(*trained, b, 64, StartStateMode::kSubtract, Precision::kBf16, &bf16_sliced);
  EXPECT_NEAR(bf16_full, full_loss, 2e-2 * std::abs(full_loss));
  EXPECT_NEAR(bf16_sliced, bf16_full, 1e-2 * std::abs(full_loss));
}

// A step over the cap fails with kResourceExhausted, and the process stays usable: a step
// that fits runs afterwards, under the same cap.
TEST(Cuda, MemoryCapFailsAloneWithResourceExhausted) {
  SKIP_WITHOUT_CUDA();
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 1);
  model->to(kCuda);
  const testing::Batch small = testing::RandomBatch(1, 64, 256, 2);
  const testing::Batch huge = testing::RandomBatch(64, 8192, 256, 3);
  CapDeviceMemory("cuda:0", 256ll << 20);
  ResetPeakMemory(kCuda);  // the tests before this one in the same process reserved more
  SlimStepOptions o;
  o.chunk_size = 8192;
  try {
    SlimTrainingStep(*model, huge.tokens.to(kCuda), huge.targets.to(kCuda), o);
    ADD_FAILURE() << "a step needing gigabytes ran under a 256 MiB cap";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted) << e.what();
  }
  model->zero_grad(true);
  o.chunk_size = 64;
  EXPECT_NO_THROW(SlimTrainingStep(*model, small.tokens.to(kCuda), small.targets.to(kCuda), o));
  EXPECT_LE(PeakMemoryBytes(kCuda), 256ll << 20) << "reserved peak above the cap";
  CapDeviceMemory("cuda:0", 0);
}

// Optimizer moments saved on the GPU resume onto the CPU (a retry elsewhere) and train on.
TEST(Cuda, CheckpointResumesOnAnotherDevice) {
  SKIP_WITHOUT_CUDA();
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 4);
  model->to(kCuda);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-3));
  const testing::Batch b = testing::RandomBatch(1, 32, 256, 5);
  SlimStepOptions o;
  o.chunk_size = 16;
  SlimTrainingStep(*model, b.tokens.to(kCuda), b.targets.to(kCuda), o);
  opt.step();
  const std::string path = testing::TempPath("cuda-resume");
  SaveCheckpoint(path, *model, opt, {{"step", "1"}});
  Checkpoint c = ReadCheckpoint(path);
  c.model->to(at::kCPU);
  torch::optim::AdamW resumed(c.model->parameters(), torch::optim::AdamWOptions(1e-3));
  RestoreOptimizer(c, resumed, at::kCPU);
  SlimTrainingStep(*c.model, b.tokens, b.targets, o);
  EXPECT_NO_THROW(resumed.step());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace slim
