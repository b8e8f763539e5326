// SLiM against ordinary backprop on trained weights (issue 16): the shipped base model
// (models/base-mini.safetensors, trained with favor+) and the same model with its query and key
// projections scaled ×3 and ×10, which makes features extreme (favor+ key features spanning
// dozens of orders of magnitude). Every feature map runs on these weights (the projections do
// not depend on the map, only M does), both start-state modes, C ∈ {1, 7, 64, 256, L−1},
// batch 1 and 4, full and LoRA tuning in fp32 (full tuning at batch 1 in fp64), on real text.
//
// Tolerances: the bounds — fp32 loss within 1e-5 relative and gradients within 1e-4
// (max-norm relative, RelErr) of the one-slice step, fp64 within 1e-9 — except where fp32
// ordinary backprop is itself further than that from the fp64 gradient (see below). Random weights
// never exposed the bug this guards against: float subtraction rebuilt start states with
// errors of the size of the final state's rounding unit, 0.28 nats of loss at C = 64.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "engine/exact_sum.h"
#include "engine/model.h"
#include "engine/model_file.h"
#include "engine/slim_step.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

using testing::RelErr;
using Grads = std::map<std::string, at::Tensor>;

constexpr int64_t kL = 260;

std::string SourcePath(const std::string& rel) { return std::string(SLIM_SOURCE_DIR) + "/" + rel; }

// The shipped model's weights under `map`, with wq and wk (weights and biases) scaled by
// `qk_scale`, in fp32; LoRA adapters with non-zero B when `lora` (as after some training: with
// B = 0 the adapters' A gradients would be exactly zero and compare trivially).
PerformerLM TrainedModel(FeatureMap map, double qk_scale, bool lora) {
  PerformerLM shipped = LoadModelFile(SourcePath("models/base-mini.safetensors"));
  ModelConfig config = shipped->config();
  config.feature_map = map;
  PerformerLM model(config, /*init_seed=*/5);
  {
    at::NoGradGuard no_grad;
    const auto from = shipped->named_parameters();
    for (auto& p : model->named_parameters()) {
      at::Tensor v = from[p.key()].clone();
      if (p.key().find(".wq.") != std::string::npos || p.key().find(".wk.") != std::string::npos) {
        v.mul_(qk_scale);
      }
      p.value().copy_(v);
    }
  }
  if (lora) {
    model->EnableLora(4, 8.0);
    at::NoGradGuard no_grad;
    at::Generator gen = testing::Gen(7);
    for (auto& p : model->named_parameters()) {
      if (p.key().find("lora_b") != std::string::npos) {
        p.value().copy_(at::randn(p.value().sizes(), gen, at::kDouble) * 0.02);
      }
    }
  }
  return model;
}

// The same model (same weights, adapters and projections) in fp64.
// The same model in fp64; with `attention_block` > 0, with that block size instead of its own:
// the same function, summed in another order.
PerformerLM InDouble(PerformerLMImpl& m32, int64_t attention_block = 0) {
  ModelConfig config = m32.config();
  if (attention_block > 0) config.attention_block = attention_block;
  PerformerLM m64(config, /*init_seed=*/5);
  if (m32.lora_enabled()) m64->EnableLora(m32.lora_rank(), m32.lora_alpha());
  m64->to(at::kDouble);
  at::NoGradGuard no_grad;
  const auto params = m32.named_parameters();
  for (auto& p : m64->named_parameters()) p.value().copy_(params[p.key()]);
  const auto buffers = m32.named_buffers();
  for (auto& b : m64->named_buffers()) b.value().copy_(buffers[b.key()]);
  return m64;
}

// Real text: a fixed copy of this repository's docs (tests/engine/data/exactness-text.txt),
// so that editing the docs does not change what these tests compute.
std::string FixtureText() { return testing::ReadFileBytes(SourcePath("tests/engine/data/exactness-text.txt")); }

// B sequences of real text (the fixture's unless given), targets the next bytes.
testing::Batch TextBatch(int64_t batch, int64_t length, const std::string& text = FixtureText()) {
  EXPECT_GT(static_cast<int64_t>(text.size()), batch * 997 + length + 1);
  at::Tensor ids = at::empty({batch, length + 1}, at::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t <= length; ++t) {
      ids[b][t] = static_cast<int64_t>(static_cast<unsigned char>(text[b * 997 + t]));
    }
  }
  return {ids.narrow(1, 0, length).contiguous(), ids.narrow(1, 1, length).clone()};
}

struct Outcome {
  double loss = 0;
  Grads grads;
};

Outcome Step(PerformerLMImpl& model, const testing::Batch& b, int64_t C, StartStateMode mode) {
  model.zero_grad(/*set_to_none=*/true);
  SlimStepOptions o;
  o.chunk_size = C;
  o.mode = mode;
  Outcome out;
  out.loss = SlimTrainingStep(model, b.tokens, b.targets, o).loss;
  for (const auto& p : model.named_parameters()) {
    if (p.value().requires_grad() && p.value().grad().defined()) out.grads[p.key()] = p.value().grad().clone();
  }
  return out;
}

using Case = std::tuple<FeatureMap, double>;  // map, q/k scale

// Largest RelErr over the parameters of `got` against `want`, and which parameter it was.
double WorstGradient(const Grads& got, const Grads& want, std::string* name) {
  double worst = 0;
  for (const auto& [n, g] : want) {
    const double e = RelErr(got.at(n), g);
    if (e >= worst) worst = e, *name = n;
  }
  return worst;
}

class TrainedExactness : public ::testing::TestWithParam<Case> {};

// fp32: the loss within 1e-5 of ordinary backprop's; every gradient within 1e-4 of ordinary
// backprop's — except where fp32 itself cannot get that close to the true (fp64) gradient:
// favor+ with q/k ×10 puts ordinary backprop's first-layer wq/wk gradients 2–6% away from
// fp64's (ill-conditioned feature gradients amplify rounding). There SLiM's own distance from
// fp64 must be within 4× ordinary backprop's: as exact as the arithmetic allows, no worse.
TEST_P(TrainedExactness, Fp32EveryModeAndChunkSizeEqualsOrdinaryBackprop) {
  const auto [map, scale] = GetParam();
  for (bool lora : {false, true}) {
    PerformerLM model = TrainedModel(map, scale, lora);
    PerformerLM model64 = InDouble(*model);
    for (int64_t batch : {1, 4}) {
      const testing::Batch b = TextBatch(batch, kL);
      const Outcome full = Step(*model, b, kL, StartStateMode::kSubtract);
      const Outcome truth = Step(*model64, b, kL, StartStateMode::kSubtract);
      ASSERT_TRUE(std::isfinite(full.loss));
      ASSERT_FALSE(full.grads.empty());
      std::map<std::string, double> fp32_error;  // ordinary backprop's distance from fp64
      for (const auto& [name, g] : full.grads) fp32_error[name] = RelErr(g, truth.grads.at(name));
      for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
        for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{256}, kL - 1}) {
          const std::string what = FeatureMapName(map) + " qk×" + std::to_string(scale) +
                                   (lora ? " lora" : " full") + " B=" + std::to_string(batch) + " " +
                                   StartStateModeName(mode) + " C=" + std::to_string(C);
          const Outcome slim = Step(*model, b, C, mode);
          EXPECT_LE(std::abs(slim.loss - full.loss), 1e-5 * std::abs(full.loss))
              << what << ": loss " << slim.loss << " vs " << full.loss;
          for (const auto& [name, g] : full.grads) {
            if (fp32_error[name] <= 3e-5) {
              EXPECT_LE(RelErr(slim.grads.at(name), g), 1e-4)
                  << what << ": " << name << " (ordinary backprop is " << fp32_error[name]
                  << " from fp64, SLiM " << RelErr(slim.grads.at(name), truth.grads.at(name)) << ")";
            } else {
              EXPECT_LE(RelErr(slim.grads.at(name), truth.grads.at(name)), 4 * fp32_error[name])
                  << what << ": " << name << " (ordinary backprop is " << fp32_error[name]
                  << " from fp64)";
            }
          }
        }
      }
    }
  }
}

// fp64: within 1e-9 of ordinary backprop (full tuning at batch 1; fp32 above covers LoRA and
// batch 4, SlimStep.GradientsEqualFullBackpropFp64 batch 2 in fp64) — except where fp64 itself
// is that ill-conditioned: ordinary backprop summed in another order (attention blocks of 16
// instead of 64, the same function) moves a parameter's gradient further than 1e-9. Then SLiM's
// must stay within 4× that distance. Measured: on the 16k-context base with favor+ q/k ×3, the
// reordered ordinary backprop is 3e-4 away in layers.1.wq (extreme key features), SLiM 1.5e-4.
TEST_P(TrainedExactness, Fp64EveryModeAndChunkSizeEqualsOrdinaryBackprop) {
  const auto [map, scale] = GetParam();
  PerformerLM fp32_model = TrainedModel(map, scale, /*lora=*/false);
  PerformerLM model = InDouble(*fp32_model);
  const testing::Batch b = TextBatch(1, kL);
  const Outcome full = Step(*model, b, kL, StartStateMode::kSubtract);
  PerformerLM reordered_model = InDouble(*fp32_model, /*attention_block=*/16);
  const Grads reordered = Step(*reordered_model, b, kL, StartStateMode::kSubtract).grads;
  std::map<std::string, double> reorder, bound;  // per parameter
  for (const auto& [name, g] : full.grads) {
    reorder[name] = RelErr(reordered.at(name), g);
    bound[name] = reorder[name] <= 1e-9 ? 1e-9 : 4 * reorder[name];
  }
  for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
    for (int64_t C : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{256}, kL - 1}) {
      const Outcome slim = Step(*model, b, C, mode);
      const std::string what = FeatureMapName(map) + " qk×" + std::to_string(scale) + " " +
                               StartStateModeName(mode) + " C=" + std::to_string(C);
      EXPECT_LE(std::abs(slim.loss - full.loss), 1e-9 * std::abs(full.loss)) << what;
      for (const auto& [name, g] : full.grads) {
        EXPECT_LE(RelErr(slim.grads.at(name), g), bound.at(name))
            << what << ": " << name << " (ordinary backprop summed in another order moves it by "
            << reorder.at(name) << ")";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    BaseMini, TrainedExactness,
    ::testing::Combine(::testing::Values(FeatureMap::kFavorPlus, FeatureMap::kRelu,
                                         FeatureMap::kEluPlusOne, FeatureMap::kSquare),
                       ::testing::Values(1.0, 3.0, 10.0)),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string map = FeatureMapName(std::get<0>(info.param));
      for (char& c : map) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return map + "_qk" + std::to_string(static_cast<int>(std::get<1>(info.param)));
    });

// The audit on trained weights: rebuilt start states equal the stored ones bit for bit.
TEST(TrainedExactnessAudit, RebuiltStartStatesEqualStoredOnesExactly) {
  for (double scale : {1.0, 10.0}) {
    PerformerLM model = TrainedModel(FeatureMap::kFavorPlus, scale, /*lora=*/false);
    const testing::Batch b = TextBatch(4, kL);
    SlimStepOptions o;
    o.chunk_size = 7;
    o.audit_start_states = true;
    const SlimStepResult r = SlimTrainingStep(*model, b.tokens, b.targets, o);
    EXPECT_EQ(r.audited_states, (r.slices - 2) * model->n_layers());
    EXPECT_EQ(r.max_start_state_drift, 0.0) << "qk×" << scale;
  }
}

// The long-sequence audit on trained weights at the planner's smallest chunk size (the
// attention block): L = 16,384, C = 64, 256 slices. Rebuilt start states equal the stored ones
// bit for bit, and SLiM's gradients are as close to the fp64 gradient as ordinary backprop's.
TEST(TrainedExactnessAudit, LongSequenceAtTheSmallestPlannedChunkSize) {
  const int64_t L = 16384, C = 64;
  PerformerLM model = TrainedModel(FeatureMap::kFavorPlus, 1.0, /*lora=*/false);
  PerformerLM model64 = InDouble(*model);
  ASSERT_EQ(model->config().attention_block, C);
  const std::string text = FixtureText();
  ASSERT_GT(static_cast<int64_t>(text.size()), L + 1);
  at::Tensor ids = at::empty({1, L + 1}, at::kLong);
  for (int64_t t = 0; t <= L; ++t) ids[0][t] = static_cast<int64_t>(static_cast<unsigned char>(text[t]));
  const testing::Batch b{ids.narrow(1, 0, L).contiguous(), ids.narrow(1, 1, L).clone()};

  model->zero_grad(true);
  SlimStepOptions o;
  o.chunk_size = C;
  o.audit_start_states = true;
  const SlimStepResult r = SlimTrainingStep(*model, b.tokens, b.targets, o);
  EXPECT_EQ(r.audited_states, (L / C - 2) * model->n_layers());
  EXPECT_EQ(r.max_start_state_drift, 0.0);
  Grads slim;
  for (const auto& p : model->named_parameters()) slim[p.key()] = p.value().grad().clone();
  const Outcome full = Step(*model, b, L, StartStateMode::kSubtract);
  const Outcome truth = Step(*model64, b, L, StartStateMode::kSubtract);
  EXPECT_LE(std::abs(r.loss - full.loss), 1e-5 * full.loss);
  double worst_slim = 0, worst_full = 0;
  std::string name_slim, name_full;
  worst_slim = WorstGradient(slim, truth.grads, &name_slim);
  worst_full = WorstGradient(full.grads, truth.grads, &name_full);
  std::printf("[ drift ] L=%lld C=%lld loss %.9f (fp64 %.9f); worst gradient error vs fp64: SLiM %.3e (%s), "
              "ordinary backprop %.3e (%s)\n",
              static_cast<long long>(L), static_cast<long long>(C), r.loss, truth.loss, worst_slim,
              name_slim.c_str(), worst_full, name_full.c_str());
  EXPECT_LE(worst_slim, std::max(1e-4, 2 * worst_full));
}

// relu features are not differentiable at 0. A pre-activation within fp32 rounding of 0 can
// land on either side depending on how a GEMM of another shape rounds it, and the gradient of
// that feature then jumps: no fp32 computation, ordinary backprop included, can promise 1e-4
// there. On this text (an older docs/engine.md) the 64-token slices' q/k projection puts one
// key pre-activation of layer 3 at +2.5e-7 where fp64 has it below 0 (found on the machine CI
// runs on), and layers.3.wk.lora_b moves 1.8e-4 from fp64 while ordinary backprop is 1.3e-6
// away. So here every gradient must be within 1e-4 of ordinary backprop's unless a feature is
// on another side of the kink in the slices' (or ordinary backprop's) fp32 forward than in
// fp64's — the only allowed explanation — and the loss within 1e-5 always.

// Which relu pre-activations (q and k, every layer) are above 0 when `model` runs `tokens` in
// slices of C: relu(x) + 1e-3 equals the constant 1e-3 of the model's dtype exactly when x ≤ 0.
at::Tensor ReluSides(PerformerLMImpl& model, const at::Tensor& tokens, int64_t C) {
  at::NoGradGuard no_grad;
  const int64_t L = tokens.size(1), R = model.n_layers();
  ModelState state = model.ZeroState(tokens.size(0));
  std::vector<std::vector<at::Tensor>> per_layer(R);
  for (int64_t start = 0; start < L; start += C) {
    at::Tensor x = model.Embed(tokens.narrow(1, start, std::min(C, L - start)), start);
    for (int64_t r = 0; r < R; ++r) {
      const LayerProjections p = model.Project(r, x, start);
      const at::Tensor floor = at::full({}, 1e-3, p.phi_k.options());
      per_layer[r].push_back(at::cat({p.phi_q != floor, p.phi_k != floor}, -1));
      AttentionState end;
      x = model.Mix(r, x, p, state[r], &end);
      state[r] = std::move(end);
    }
  }
  std::vector<at::Tensor> layers;
  for (auto& slices : per_layer) layers.push_back(at::cat(slices, 2));
  return at::stack(layers);
}

TEST(TrainedExactnessReluKink, GradientsDifferOnlyWhereAFeatureCrossesTheKink) {
  PerformerLM model = TrainedModel(FeatureMap::kRelu, 3.0, /*lora=*/true);
  PerformerLM model64 = InDouble(*model);
  const testing::Batch b =
      TextBatch(4, kL, testing::ReadFileBytes(SourcePath("tests/engine/data/relu-kink-text.txt")));
  const Outcome full = Step(*model, b, kL, StartStateMode::kSubtract);
  const Outcome truth = Step(*model64, b, kL, StartStateMode::kSubtract);
  const at::Tensor true_sides = ReluSides(*model64, b.tokens, kL);
  // Ordinary backprop's own crossings count too: either side of the comparison may be the one
  // that moved.
  const int64_t full_crossings = (ReluSides(*model, b.tokens, kL) != true_sides).sum().item<int64_t>();
  int explained = 0;
  for (int64_t C : {int64_t{7}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{128}}) {
    const int64_t crossings =
        full_crossings + (ReluSides(*model, b.tokens, C) != true_sides).sum().item<int64_t>();
    for (StartStateMode mode : {StartStateMode::kSubtract, StartStateMode::kBoundaries}) {
      const std::string what = std::string(StartStateModeName(mode)) + " C=" + std::to_string(C);
      const Outcome slim = Step(*model, b, C, mode);
      EXPECT_LE(std::abs(slim.loss - full.loss), 1e-5 * std::abs(full.loss)) << what;
      std::string name;
      const double worst = WorstGradient(slim.grads, full.grads, &name);
      if (worst > 1e-4) {
        EXPECT_GT(crossings, 0) << what << ": " << name << " is " << worst
                                << " from ordinary backprop with every feature on fp64's side of the kink";
        ++explained;
      }
      std::printf("[ kink ] %s: %lld features on the other side of the kink, worst gradient %.3e (%s)\n",
                  what.c_str(), static_cast<long long>(crossings), worst, name.c_str());
    }
  }
  // Not asserted: whether a crossing happens at all depends on the BLAS's rounding.
  std::printf("[ kink ] %d of 10 runs past 1e-4, each with a feature across the kink\n", explained);
}

}  // namespace
}  // namespace slim
