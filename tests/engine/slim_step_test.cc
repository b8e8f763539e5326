// The SLiM step against ordinary backprop (C ≥ L): every parameter gradient, both start-state
// modes, every feature map, padding, batch > 1; state gradients by finite differences; the
// subtraction drift audit; determinism; bf16 autocast; input errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "base/errors.h"
#include "engine/head_loss.h"
#include "engine/model.h"
#include "engine/slim_step.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

using testing::RelErr;
using testing::TinyConfig;

using Grads = std::map<std::string, at::Tensor>;

struct StepOutcome {
  SlimStepResult result;
  Grads grads;
};

StepOutcome RunStep(PerformerLMImpl& model, const testing::Batch& b, int64_t C, StartStateMode mode,
                    Precision precision = Precision::kFp32, int64_t logits_block_bytes = kDefaultLogitsBlockBytes) {
  model.zero_grad(/*set_to_none=*/true);
  SlimStepOptions o;
  o.chunk_size = C;
  o.mode = mode;
  o.precision = precision;
  o.logits_block_bytes = logits_block_bytes;
  StepOutcome out;
  out.result = SlimTrainingStep(model, b.tokens, b.targets, o);
  for (const auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;  // frozen under LoRA
    EXPECT_TRUE(p.value().grad().defined()) << p.key();
    if (p.value().grad().defined()) out.grads[p.key()] = p.value().grad().clone();
  }
  return out;
}

double MaxRelErr(const Grads& got, const Grads& want, std::string* worst) {
  double m = 0;
  for (const auto& [name, g] : want) {
    const double e = RelErr(got.at(name), g);
    if (e >= m) {
      m = e;
      *worst = name;
    }
  }
  return m;
}

const FeatureMap kAllMaps[] = {FeatureMap::kFavorPlus, FeatureMap::kRelu, FeatureMap::kEluPlusOne,
                               FeatureMap::kSquare, FeatureMap::kLearned};

// fp64: SLiM gradients equal full backprop up to rounding for every C, mode and map.
TEST(SlimStep, GradientsEqualFullBackpropFp64) {
  const int64_t L = 64;
  for (FeatureMap map : kAllMaps) {
    PerformerLM model(TinyConfig(map), 11);
    model->to(at::kDouble);
    const testing::Batch b = testing::RandomBatch(2, L, 256, 12, /*pad_tail=*/9);
    const StepOutcome full = RunStep(*model, b, L, StartStateMode::kSubtract);
    EXPECT_EQ(full.result.slices, 1);
    ASSERT_EQ(full.grads.size(), model->parameters().size());
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {int64_t{1}, int64_t{3}, int64_t{16}, int64_t{37}, L - 1}) {
        const StepOutcome slim = RunStep(*model, b, C, mode);
        std::string worst;
        EXPECT_LE(MaxRelErr(slim.grads, full.grads, &worst), 1e-9)
            << FeatureMapName(map) << " " << StartStateModeName(mode) << " C=" << C << " worst " << worst;
        EXPECT_NEAR(slim.result.loss, full.result.loss, 1e-12 * std::abs(full.result.loss));
        EXPECT_EQ(slim.result.slices, (L + C - 1) / C);
        EXPECT_EQ(slim.result.target_count, 2 * L - 9);
      }
    }
  }
}

// The same for the architecture variants (RMSNorm, SwiGLU, tanh GELU), also with LoRA adapters
// on every projection (SwiGLU's w3 included).
// The same on the ATen attention path CUDA takes (forced on the CPU): full SLiM steps, both
// modes, a feature map with random features and one without.
TEST(SlimStep, TorchAttentionPathGradientsEqualFullBackpropFp64) {
  testing::TorchAttentionPath torch_path;
  const int64_t L = 50;
  for (FeatureMap map : {FeatureMap::kFavorPlus, FeatureMap::kSquare}) {
    PerformerLM model(TinyConfig(map), 13);
    model->to(at::kDouble);
    const testing::Batch b = testing::RandomBatch(2, L, 256, 14, /*pad_tail=*/7);
    const StepOutcome full = RunStep(*model, b, L, StartStateMode::kSubtract);
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{33}}) {
        const StepOutcome slim = RunStep(*model, b, C, mode);
        std::string worst;
        EXPECT_LE(MaxRelErr(slim.grads, full.grads, &worst), 1e-9)
            << FeatureMapName(map) << " " << StartStateModeName(mode) << " C=" << C << " worst " << worst;
        EXPECT_NEAR(slim.result.loss, full.result.loss, 1e-12 * std::abs(full.result.loss));
      }
    }
  }
}

TEST(SlimStep, GradientsEqualFullBackpropFp64ForEveryArchitectureVariant) {
  const int64_t L = 64;
  for (const ModelConfig& c : testing::VariantConfigs()) {
    for (bool lora : {false, true}) {
      PerformerLM model(c, 21);
      model->to(at::kDouble);
      if (lora) model->EnableLora(4, 8.0);
      testing::PerturbParameters(*model, 22);
      const testing::Batch b = testing::RandomBatch(2, L, 256, 23, /*pad_tail=*/5);
      const StepOutcome full = RunStep(*model, b, L, StartStateMode::kSubtract);
      ASSERT_FALSE(full.grads.empty());
      for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
        for (int64_t C : {int64_t{1}, int64_t{16}, int64_t{37}}) {
          const StepOutcome slim = RunStep(*model, b, C, mode);
          std::string worst;
          EXPECT_LE(MaxRelErr(slim.grads, full.grads, &worst), 1e-9)
              << testing::Describe(c) << (lora ? " lora" : "") << " " << StartStateModeName(mode) << " C=" << C
              << " worst " << worst;
          EXPECT_NEAR(slim.result.loss, full.result.loss, 1e-12 * std::abs(full.result.loss));
        }
      }
    }
  }
}

// The architecture variants in fp32 (L = 200: the GPT-2 layout's learned positions end there):
// relative error ≤ 1e-4 on every parameter gradient.
TEST(SlimStep, GradientsEqualFullBackpropFp32ForEveryArchitectureVariant) {
  const int64_t L = 200;
  for (const ModelConfig& c : testing::VariantConfigs()) {
    PerformerLM model(c, 31);
    testing::PerturbParameters(*model, 32);
    const testing::Batch b = testing::RandomBatch(2, L, 256, 33, /*pad_tail=*/20);
    const StepOutcome full = RunStep(*model, b, L, StartStateMode::kSubtract);
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {int64_t{16}, int64_t{37}, int64_t{64}}) {
        const StepOutcome slim = RunStep(*model, b, C, mode);
        std::string worst;
        EXPECT_LE(MaxRelErr(slim.grads, full.grads, &worst), 1e-4)
            << testing::Describe(c) << " " << StartStateModeName(mode) << " C=" << C << " worst " << worst;
        EXPECT_NEAR(slim.result.loss, full.result.loss, 1e-5 * full.result.loss);
      }
    }
  }
}

// Softmax attention has no state to carry between slices: a chunk below the sequence length is
// refused with the reason; ordinary backprop (C = L) trains it.
TEST(SlimStep, SoftmaxAttentionTrainsOnlyWholeSequences) {
  ModelConfig c = testing::VariantConfigs().at(4);
  c.feature_map = FeatureMap::kSoftmax;
  PerformerLM model(c, 51);
  const testing::Batch b = testing::RandomBatch(2, 32, 256, 52);
  SlimStepOptions o;
  o.chunk_size = 16;
  try {
    SlimTrainingStep(*model, b.tokens, b.targets, o);
    FAIL() << "a softmax model was trained in slices";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("softmax attention has no prefix-sum state"), std::string::npos) << e.what();
  }
  o.chunk_size = 32;
  const SlimStepResult r = SlimTrainingStep(*model, b.tokens, b.targets, o);
  // The loss of the whole forward, and a gradient on every parameter.
  at::Tensor loss;
  {
    at::NoGradGuard no_grad;
    loss = at::cross_entropy_loss(model->Forward(b.tokens).reshape({-1, 256}), b.targets.reshape({-1}));
  }
  EXPECT_NEAR(r.loss, loss.item<double>(), 1e-5 * loss.item<double>());
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().max().item<double>(), 0.0) << p.key();
  }
}

// The loss in row blocks is the cross-entropy sum, and its gradients autograd's through the
// whole logits, for every block size (ignored rows included).
TEST(BlockedCrossEntropy, EqualsTheWholeLossAndItsGradients) {
  const int64_t N = 23, D = 8, V = 50;
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const at::Tensor h0 = at::randn({N, D}, testing::Gen(1), dtype), w0 = at::randn({V, D}, testing::Gen(2), dtype);
    at::Tensor targets = at::randint(V, {N}, testing::Gen(3), at::kLong);
    targets[4] = -100;
    targets[N - 1] = -100;
    const at::Tensor h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    const at::Tensor whole =
        at::cross_entropy_loss(at::linear(h, w), targets, {}, at::Reduction::Sum, -100);
    whole.backward();
    const double tolerance = dtype == at::kDouble ? 1e-13 : 1e-5;
    for (int64_t rows : {int64_t{1}, int64_t{7}, N, 2 * N}) {
      const at::Tensor hb = h0.clone().requires_grad_(true), wb = w0.clone().requires_grad_(true);
      const at::Tensor blocked = BlockedCrossEntropySum(hb, wb, targets, -100, rows);
      blocked.backward();
      EXPECT_NEAR(blocked.item<double>(), whole.item<double>(), tolerance * std::abs(whole.item<double>()))
          << "rows " << rows;
      EXPECT_LE(RelErr(hb.grad(), h.grad()), tolerance) << "rows " << rows;
      EXPECT_LE(RelErr(wb.grad(), w.grad()), tolerance) << "rows " << rows;
      EXPECT_EQ(hb.grad()[4].abs().max().item<double>(), 0.0) << "an ignored row has a gradient";
    }
  }
  EXPECT_EQ(RowsPerLogitsBlock(50257, 32 << 20), 166);
  EXPECT_EQ(RowsPerLogitsBlock(1 << 30, 1), 1);
}

// A model whose slices' logits exceed the budget trains on them in row blocks: SLiM with blocks
// equals ordinary backprop without them (fp64 to 1e-9), tied and untied heads, both modes.
TEST(SlimStep, LogitsInRowBlocksGiveTheSameGradients) {
  const int64_t L = 48;
  for (int variant : {3, 4}) {  // GPT-2's layout (tied head), Llama's (untied)
    ModelConfig c = testing::VariantConfigs().at(variant);
    c.vocab_size = 1000;
    PerformerLM model(c, 41);
    model->to(at::kDouble);
    testing::PerturbParameters(*model, 42);
    const testing::Batch b = testing::RandomBatch(2, L, c.vocab_size, 43, /*pad_tail=*/5);
    const StepOutcome whole = RunStep(*model, b, L, StartStateMode::kSubtract, Precision::kFp32, /*logits_block_bytes=*/0);
    // 5 rows of 1000 fp32 logits: blocks that straddle slice and sequence boundaries.
    const int64_t budget = 5 * 1000 * 4;
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {int64_t{16}, L}) {
        const StepOutcome blocked = RunStep(*model, b, C, mode, Precision::kFp32, budget);
        std::string worst;
        EXPECT_LE(MaxRelErr(blocked.grads, whole.grads, &worst), 1e-9)
            << testing::Describe(c) << " " << StartStateModeName(mode) << " C=" << C << " worst " << worst;
        EXPECT_NEAR(blocked.result.loss, whole.result.loss, 1e-12 * whole.result.loss);
      }
    }
  }
  // bf16 autocast: the blocks' logits are bf16 matmuls as the whole slice's are; the weight
  // gradient is summed over blocks in fp32 instead of one bf16 GEMM, so close, not equal.
  ModelConfig c = testing::VariantConfigs().at(4);
  c.vocab_size = 1000;
  PerformerLM model(c, 44);
  const testing::Batch b = testing::RandomBatch(2, L, c.vocab_size, 45);
  const StepOutcome whole = RunStep(*model, b, 16, StartStateMode::kBoundaries, Precision::kBf16, 0);
  const StepOutcome blocked = RunStep(*model, b, 16, StartStateMode::kBoundaries, Precision::kBf16, 5 * 1000 * 4);
  std::string worst;
  EXPECT_LE(MaxRelErr(blocked.grads, whole.grads, &worst), 2e-2) << "bf16, worst " << worst;
  EXPECT_NEAR(blocked.result.loss, whole.result.loss, 1e-3 * whole.result.loss);
  // Evaluation too: the sliced loss with blocks is the one without.
  PerformerLM f64(c, 46);
  f64->to(at::kDouble);
  const double unblocked = SlicedLoss(*f64, b.tokens, b.targets, 16, Precision::kFp32, kIgnoreIndex, 0);
  EXPECT_NEAR(SlicedLoss(*f64, b.tokens, b.targets, 16, Precision::kFp32, kIgnoreIndex, 5 * 1000 * 4), unblocked,
              1e-12 * unblocked);
}

// fp32 at L ≈ 1k: relative error ≤ 1e-4 on every parameter gradient.
TEST(SlimStep, GradientsEqualFullBackpropFp32AtL1024) {
  const int64_t L = 1000;
  for (FeatureMap map : kAllMaps) {
    PerformerLM model(TinyConfig(map), 13);
    const testing::Batch b = testing::RandomBatch(2, L, 256, 14, /*pad_tail=*/100);
    const StepOutcome full = RunStep(*model, b, L, StartStateMode::kSubtract);
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      for (int64_t C : {64, 100, 256}) {
        const StepOutcome slim = RunStep(*model, b, C, mode);
        std::string worst;
        EXPECT_LE(MaxRelErr(slim.grads, full.grads, &worst), 1e-4)
            << FeatureMapName(map) << " " << StartStateModeName(mode) << " C=" << C << " worst " << worst;
        EXPECT_NEAR(slim.result.loss, full.result.loss, 1e-5 * full.result.loss);
      }
    }
  }
}

TEST(SlimStep, LossEqualsMeanCrossEntropyOfFullForward) {
  PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 15);
  model->to(at::kDouble);
  const testing::Batch b = testing::RandomBatch(3, 50, 256, 16, /*pad_tail=*/20);
  at::Tensor expected;
  {
    at::NoGradGuard no_grad;
    expected = at::cross_entropy_loss(model->Forward(b.tokens).reshape({-1, 256}),
                                      b.targets.reshape({-1}), {}, at::Reduction::Mean, kIgnoreIndex);
  }
  const StepOutcome slim = RunStep(*model, b, 7, StartStateMode::kSubtract);
  EXPECT_NEAR(slim.result.loss, expected.item<double>(), 1e-12);
  EXPECT_NEAR(SlicedLoss(*model, b.tokens, b.targets, 7, Precision::kFp32), expected.item<double>(), 1e-12);
}

TEST(SlimStep, SameSeedGivesIdenticalGradients) {
  const testing::Batch b = testing::RandomBatch(2, 200, 256, 17);
  Grads first;
  for (int run = 0; run < 2; ++run) {
    PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 18);
    const StepOutcome o = RunStep(*model, b, 48, StartStateMode::kSubtract);
    if (run == 0) {
      first = o.grads;
      continue;
    }
    for (const auto& [name, g] : first) EXPECT_TRUE(at::equal(o.grads.at(name), g)) << name;
  }
}

// The gradient G that the backward sweep carries equals ∂loss/∂(state at a slice boundary),
// checked by central differences of the loss re-run from the perturbed boundary state.
TEST(SlimStep, StateGradientsMatchFiniteDifferencesFp64) {
  const int64_t L = 24, C = 8;
  PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 19);
  model->to(at::kDouble);
  const testing::Batch b = testing::RandomBatch(2, L, 256, 20, /*pad_tail=*/3);
  model->zero_grad();
  SlimStepOptions o;
  o.chunk_size = C;
  o.record_state_gradients = true;
  const SlimStepResult r = SlimTrainingStep(*model, b.tokens, b.targets, o);
  ASSERT_EQ(r.state_gradients.size(), 2u);
  const double count = static_cast<double>(r.target_count);

  at::NoGradGuard no_grad;
  for (int64_t boundary = 0; boundary < 2; ++boundary) {  // end of slice 0 and of slice 1
    const int64_t offset = (boundary + 1) * C;
    ModelState at_boundary = model->ZeroState(2);
    model->ForwardSlice(b.tokens.narrow(1, 0, offset), 0, &at_boundary);
    // Loss contributed by the positions after the boundary, as a function of its state.
    auto tail_loss = [&] {
      ModelState st = at_boundary;
      const at::Tensor logits = model->ForwardSlice(b.tokens.narrow(1, offset, L - offset), offset, &st);
      return at::cross_entropy_loss(logits.reshape({-1, 256}), b.targets.narrow(1, offset, L - offset).reshape({-1}),
                                    {}, at::Reduction::Sum, kIgnoreIndex)
                 .item<double>() / count;
    };
    at::Generator g = testing::Gen(21);
    for (int64_t layer = 0; layer < model->n_layers(); ++layer) {
      for (bool numerator : {true, false}) {
        at::Tensor x = numerator ? at_boundary[layer].s : at_boundary[layer].z;
        at::Tensor analytic = numerator ? r.state_gradients[boundary][layer].s
                                        : r.state_gradients[boundary][layer].z;
        at::Tensor flat = x.view({-1});
        const at::Tensor picks = at::randint(flat.numel(), {12}, g, at::kLong);
        for (int64_t i = 0; i < picks.numel(); ++i) {
          const int64_t idx = picks[i].item<int64_t>();
          const double orig = flat[idx].item<double>();
          // Step relative to the entry: favor+ state entries can be ≪ 1.
          const double h = 1e-6 * std::abs(orig) + 1e-12;
          flat[idx] = orig + h;
          const double up = tail_loss();
          flat[idx] = orig - h;
          const double down = tail_loss();
          flat[idx] = orig;
          const double fd = (up - down) / (2 * h);
          const double an = analytic.view({-1})[idx].item<double>();
          EXPECT_NEAR(an, fd, 1e-7 * std::max(1.0, std::abs(fd)))
              << "boundary " << boundary << " layer " << layer << (numerator ? " s" : " z") << "[" << idx << "]";
        }
      }
    }
  }
}

// Subtraction rebuilds start states exactly (engine/exact_sum.h): at L = 16k, C = 64 (256
// slices) the rebuilt states equal the stored ones bit for bit. (On trained weights:
// TrainedExactnessAudit.)
TEST(SlimStep, SubtractionDriftAuditAtL16k) {
  const int64_t L = 16384, C = 64;
  PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 22);
  const testing::Batch b = testing::RandomBatch(1, L, 256, 23);
  SlimStepOptions o;
  o.chunk_size = C;
  o.audit_start_states = true;
  const SlimStepResult r = SlimTrainingStep(*model, b.tokens, b.targets, o);
  EXPECT_EQ(r.audited_states, (L / C - 2) * model->n_layers());  // the audit compared them all
  EXPECT_EQ(r.max_start_state_drift, 0.0);
}

TEST(SlimStep, Bf16AutocastKeepsFp32StatesAndTracksFp32) {
  const int64_t L = 256;
  PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 24);
  const testing::Batch b = testing::RandomBatch(2, L, 256, 25);
  const StepOutcome fp32 = RunStep(*model, b, L, StartStateMode::kSubtract);
  const StepOutcome bf16 = RunStep(*model, b, 64, StartStateMode::kSubtract, Precision::kBf16);
  EXPECT_NEAR(bf16.result.loss, fp32.result.loss, 1e-2 * fp32.result.loss);
  std::string worst;
  EXPECT_LE(MaxRelErr(bf16.grads, fp32.grads, &worst), 5e-2) << worst;
  // SLiM vs full under the same bf16 autocast agree to bf16 rounding.
  const StepOutcome bf16_full = RunStep(*model, b, L, StartStateMode::kSubtract, Precision::kBf16);
  EXPECT_NEAR(bf16.result.loss, bf16_full.result.loss, 1e-2 * fp32.result.loss);
}

TEST(SlimStep, RejectsMalformedInputWithFieldName) {
  PerformerLM model(TinyConfig(FeatureMap::kFavorPlus), 26);
  testing::Batch b = testing::RandomBatch(1, 20, 256, 27);
  auto expect_error = [&](const at::Tensor& tokens, const at::Tensor& targets, int64_t C,
                          const std::string& field) {
    SlimStepOptions o;
    o.chunk_size = C;
    try {
      SlimTrainingStep(*model, tokens, targets, o);
      ADD_FAILURE() << "expected an error naming " << field;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_EQ(std::string(e.what()).rfind(field, 0), 0u) << e.what();
    }
  };
  expect_error(b.tokens, b.targets, 0, "chunk_size");
  at::Tensor bad = b.tokens.clone();
  bad[0][3] = 256;
  expect_error(bad, b.targets, 8, "tokens");
  expect_error(b.tokens, b.targets.narrow(1, 0, 10), 8, "targets");
  expect_error(b.tokens, at::full_like(b.targets, kIgnoreIndex), 8, "targets");
  at::Tensor bad_target = b.targets.clone();
  bad_target[0][0] = -5;
  expect_error(b.tokens, bad_target, 8, "targets");
  expect_error(b.tokens.to(at::kInt), b.targets, 8, "tokens");
  // Nothing was half-applied: no gradient was produced by the failed calls.
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_THROW(ParseStartStateMode("stored"), EngineError);
}

}  // namespace
}  // namespace slim
