// Model-level properties: logits independent of the chunk size, causality, recurrent decoding,
// finiteness, the stored favor+ projection and its redraw schedule, config validation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "base/errors.h"
#include "engine/model.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

using testing::RelErr;
using testing::TinyConfig;

// The logits of `tokens` run `piece` tokens at a time from the zero state, carrying the state.
at::Tensor LogitsInPieces(PerformerLMImpl& model, const at::Tensor& tokens, int64_t piece) {
  ModelState state = model.ZeroState(tokens.size(0));
  std::vector<at::Tensor> parts;
  for (int64_t t = 0; t < tokens.size(1); t += piece) {
    const int64_t n = std::min<int64_t>(piece, tokens.size(1) - t);
    parts.push_back(model.ForwardSlice(tokens.narrow(1, t, n), t, &state));
  }
  return at::cat(parts, 1);
}

const FeatureMap kAllMaps[] = {FeatureMap::kFavorPlus, FeatureMap::kRelu, FeatureMap::kEluPlusOne,
                               FeatureMap::kSquare, FeatureMap::kLearned};

// Logits computed C tokens at a time, carrying the state.
at::Tensor SlicedLogits(PerformerLMImpl& model, const at::Tensor& tokens, int64_t C) {
  at::NoGradGuard no_grad;
  ModelState state = model.ZeroState(tokens.size(0));
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < tokens.size(1); s += C) {
    const int64_t len = std::min(C, tokens.size(1) - s);
    parts.push_back(model.ForwardSlice(tokens.narrow(1, s, len), s, &state));
  }
  return at::cat(parts, 1);
}

TEST(Model, LogitsIndependentOfChunkSize) {
  const int64_t L = 100;
  for (FeatureMap map : kAllMaps) {
    for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
      PerformerLM model(TinyConfig(map), 1);
      model->to(dtype);
      const at::Tensor tokens = testing::RandomBatch(2, L, 256, 2).tokens;
      at::Tensor full;
      {
        at::NoGradGuard no_grad;
        full = model->Forward(tokens);
      }
      // fp64: rounding only; fp32: 1e-5 relative (sums regrouped across slice boundaries).
      const double tol = dtype == at::kDouble ? 1e-12 : 1e-5;
      for (int64_t C : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{7}, int64_t{64}, L - 1, L, 2 * L}) {
        EXPECT_LE(RelErr(SlicedLogits(*model, tokens, C), full), tol)
            << FeatureMapName(map) << " " << dtype << " C=" << C;
      }
    }
  }
}

TEST(Model, ChangingTokenLeavesEarlierLogitsBitwiseUnchanged) {
  const int64_t L = 96, j = 50;
  for (FeatureMap map : kAllMaps) {
    PerformerLM model(TinyConfig(map), 3);
    at::Tensor tokens = testing::RandomBatch(1, L, 256, 4).tokens;
    at::Tensor changed = tokens.clone();
    changed[0][j] = (tokens[0][j].item<int64_t>() + 1) % 256;
    for (int64_t C : {L, int64_t{16}, int64_t{7}}) {
      const at::Tensor a = SlicedLogits(*model, tokens, C), b = SlicedLogits(*model, changed, C);
      EXPECT_TRUE(at::equal(a.narrow(1, 0, j), b.narrow(1, 0, j))) << FeatureMapName(map) << " C=" << C;
      EXPECT_FALSE(at::equal(a.narrow(1, j, 1), b.narrow(1, j, 1)));  // the change is visible
    }
  }
}

TEST(Model, RecurrentDecodingReproducesFullForward) {
  for (FeatureMap map : kAllMaps) {
    for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
      PerformerLM model(TinyConfig(map), 5);
      model->to(dtype);
      const at::Tensor tokens = testing::RandomBatch(2, 40, 256, 6).tokens;
      at::NoGradGuard no_grad;
      const at::Tensor full = model->Forward(tokens);
      ModelState state = model->ZeroState(2);
      std::vector<at::Tensor> steps;
      for (int64_t t = 0; t < 40; ++t) steps.push_back(model->ForwardSlice(tokens.narrow(1, t, 1), t, &state));
      EXPECT_LE(RelErr(at::cat(steps, 1), full), dtype == at::kDouble ? 1e-12 : 1e-5)
          << FeatureMapName(map);
    }
  }
  for (const ModelConfig& c : testing::VariantConfigs()) {
    PerformerLM model(c, 5);
    model->to(at::kDouble);
    testing::PerturbParameters(*model, 6);
    const at::Tensor tokens = testing::RandomBatch(2, 40, 256, 6).tokens;
    at::NoGradGuard no_grad;
    const at::Tensor full = model->Forward(tokens);
    EXPECT_LE(RelErr(LogitsInPieces(*model, tokens, 1), full), 1e-12) << testing::Describe(c);
  }
}

// The variants compute what their definitions say (not merely something SLiM-consistent): one
// layer's pieces against the formulas written out here — RMSNorm, SwiGLU, tanh GELU, learned
// positions, attention biases, grouped-query key/value heads, the tied head.
TEST(Model, VariantsComputeTheirDefinitions) {
  for (const ModelConfig& c : testing::VariantConfigs()) {
    PerformerLM model(c, 8);
    model->to(at::kDouble);
    testing::PerturbParameters(*model, 9);
    at::NoGradGuard no_grad;
    const auto params = model->named_parameters();
    const at::Tensor x = at::randn({1, 5, c.d_model}, testing::Gen(10), at::kDouble);
    const auto has = [&](const std::string& name) { return params.find(name) != nullptr; };
    // Embedding at positions 3..7: the token's row, plus the position's with learned positions.
    const at::Tensor tokens = testing::RandomBatch(1, 5, c.vocab_size, 11).tokens;
    at::Tensor embedded = params["embed.weight"].index_select(0, tokens[0]).unsqueeze(0);
    if (c.positions == PositionKind::kLearned) embedded = embedded + params["pos_embed.weight"].narrow(0, 3, 5);
    EXPECT_LE(RelErr(model->Embed(tokens, 3), embedded), 1e-15) << testing::Describe(c);
    // The norm named `name` ("ln_f", "layers.0.ln1", ...) of t, written out.
    const auto norm = [&](const at::Tensor& t, const std::string& name) {
      if (c.norm == NormKind::kRmsNorm) return t / at::sqrt(t.pow(2).mean(-1, true) + c.norm_eps) * params[name + ".weight"];
      const at::Tensor mean = t.mean(-1, true), var = (t - mean).pow(2).mean(-1, true);
      return (t - mean) / at::sqrt(var + c.norm_eps) * params[name + ".weight"] + params[name + ".bias"];
    };
    // The final norm and head, through Logits.
    const at::Tensor normed = norm(x, "ln_f");
    const at::Tensor head = c.tie_embeddings ? params["embed.weight"] : params["head.weight"];
    EXPECT_LE(RelErr(model->Logits(x), at::matmul(normed, head.t())), 1e-12) << testing::Describe(c);
    // Keys and values of layer 0 at positions 3..7: N1(x)·Wᵀ (+ b), in kv_heads heads, the keys
    // rotated (rotary positions only); query head j gets key/value head j / (heads / kv_heads).
    const int64_t H = c.n_heads, G = c.kv_heads(), d = c.head_dim();
    const at::Tensor n1 = norm(x, "layers.0.ln1");
    const auto projected = [&](const std::string& w) {
      at::Tensor out = at::matmul(n1, params["layers.0." + w + ".weight"].t());
      if (c.qkv_bias) out = out + params["layers.0." + w + ".bias"];
      return out.view({1, 5, G, d}).transpose(1, 2);  // (1, G, 5, d)
    };
    at::Tensor k = projected("wk"), v = projected("wv");
    if (c.positions == PositionKind::kRotary) k = ApplyRotary(k, 3, c.rope_base);
    std::vector<at::Tensor> k_heads, v_heads;
    for (int64_t j = 0; j < H; ++j) {
      k_heads.push_back(k.select(1, j / (H / G)));
      v_heads.push_back(v.select(1, j / (H / G)));
    }
    const LayerProjections at3 = model->Project(0, x, 3);
    EXPECT_LE(RelErr(at3.v, at::stack(v_heads, 1)), 1e-15) << testing::Describe(c);
    EXPECT_LE(RelErr(at3.phi_k, KeyFeatures(c.feature_map, at::stack(k_heads, 1), model->projection()[0], at::kDouble)),
              1e-12)
        << testing::Describe(c);
    EXPECT_EQ(has("layers.0.wq.bias"), c.qkv_bias);
    EXPECT_EQ(has("layers.0.wo.bias"), c.attn_out_bias);
    // Layer 0 with its attention output weight zeroed: Mix is then y + FFN(N2(y)), y = x + b_o.
    params["layers.0.wo.weight"].zero_();
    const LayerProjections p = model->Project(0, x, 0);
    const at::Tensor y = model->Mix(0, x, p, model->ZeroState(1)[0], nullptr);
    const at::Tensor w1 = params["layers.0.w1.weight"], w2 = params["layers.0.w2.weight"];
    const at::Tensor y0 = c.attn_out_bias ? x + params["layers.0.wo.bias"] : x;
    const at::Tensor h = norm(y0, "layers.0.ln2");
    at::Tensor ffn;
    if (c.ffn == FfnKind::kSwiGlu) {
      const at::Tensor gate = at::matmul(h, w1.t()), up = at::matmul(h, params["layers.0.w3.weight"].t());
      ffn = at::matmul(gate * at::sigmoid(gate) * up, w2.t());
    } else {
      const at::Tensor a = at::matmul(h, w1.t()) + params["layers.0.w1.bias"];
      const at::Tensor act = c.ffn == FfnKind::kGelu
                                 ? 0.5 * a * (1 + at::erf(a / std::sqrt(2.0)))
                                 : 0.5 * a * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (a + 0.044715 * a.pow(3))));
      ffn = at::matmul(act, w2.t()) + params["layers.0.w2.bias"];
    }
    EXPECT_LE(RelErr(y, y0 + ffn), 1e-12) << testing::Describe(c);
  }
}

// Softmax attention (the reference mode of imported models) in every architecture variant:
// decoding token by token and in pieces (carrying the key/value cache) equals the whole forward,
// and a layer's attention is softmax(q·kᵀ/√d)·v of its own rotated queries and keys.
TEST(Model, SoftmaxModeDecodesInPiecesAndComputesItsDefinition) {
  for (ModelConfig c : testing::VariantConfigs()) {
    c.feature_map = FeatureMap::kSoftmax;
    PerformerLM model(c, 5);
    model->to(at::kDouble);
    testing::PerturbParameters(*model, 6);
    const at::Tensor tokens = testing::RandomBatch(2, 40, 256, 6).tokens;
    at::NoGradGuard no_grad;
    const at::Tensor full = model->Forward(tokens);
    for (int64_t piece : {int64_t{1}, int64_t{7}}) {
      EXPECT_LE(RelErr(LogitsInPieces(*model, tokens, piece), full), 1e-12) << testing::Describe(c) << " pieces of " << piece;
    }
    // Layer 0: Mix with the output projection set to the identity (and no bias), the FFN zeroed.
    const auto params = model->named_parameters();
    params["layers.0.wo.weight"].copy_(at::eye(c.d_model, at::kDouble));
    if (c.attn_out_bias) params["layers.0.wo.bias"].zero_();
    params["layers.0.w2.weight"].zero_();
    if (params.find("layers.0.w2.bias") != nullptr) params["layers.0.w2.bias"].zero_();
    const at::Tensor x = at::randn({1, 6, c.d_model}, testing::Gen(7), at::kDouble);
    const LayerProjections p = model->Project(0, x, 0);
    const at::Tensor y = model->Mix(0, x, p, model->ZeroState(1)[0], nullptr);
    const at::Tensor scores = at::matmul(p.phi_q, p.phi_k.transpose(2, 3)) / std::sqrt(static_cast<double>(c.head_dim()));
    const at::Tensor causal = at::ones({6, 6}, at::kBool).triu(1);
    const at::Tensor attended = at::matmul(at::softmax(scores.masked_fill(causal, -INFINITY), -1), p.v);
    EXPECT_LE(RelErr(y - x, attended.transpose(1, 2).reshape({1, 6, c.d_model})), 1e-12) << testing::Describe(c);
  }
}

// A model with learned positions has max_positions of them: a token past them is refused with
// the reason, not read out of bounds.
TEST(Model, LearnedPositionsPastTheTableAreRefused) {
  ModelConfig c = TinyConfig(FeatureMap::kFavorPlus);
  c.positions = PositionKind::kLearned;
  c.max_positions = 8;
  PerformerLM model(c, 1);
  at::NoGradGuard no_grad;
  const at::Tensor tokens = testing::RandomBatch(1, 8, 256, 2).tokens;
  EXPECT_EQ(model->Forward(tokens).size(1), 8);
  try {
    model->Embed(tokens.narrow(1, 0, 2), 7);
    FAIL() << "position 8 of 8 accepted";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("positions 7..8 are beyond the model's learned positions (max_positions 8)"),
              std::string::npos)
        << e.what();
  }
}

TEST(Model, NoNanOrInfForExtremeWeightsAndInputs) {
  for (FeatureMap map : kAllMaps) {
    for (double scale : {1e-4, 1e2, 1e4}) {
      PerformerLM model(TinyConfig(map), 7);
      {
        at::NoGradGuard no_grad;
        for (auto& p : model->parameters()) p.mul_(scale);
      }
      const testing::Batch b = testing::RandomBatch(2, 64, 256, 8);
      const at::Tensor logits = model->Forward(b.tokens);
      EXPECT_TRUE(at::isfinite(logits).all().item<bool>()) << FeatureMapName(map) << " " << scale;
      at::cross_entropy_loss(logits.reshape({-1, 256}), b.targets.reshape({-1})).backward();
      for (const auto& p : model->named_parameters()) {
        ASSERT_TRUE(p.value().grad().defined()) << p.key();
        EXPECT_TRUE(at::isfinite(p.value().grad()).all().item<bool>())
            << FeatureMapName(map) << " scale " << scale << " " << p.key();
      }
    }
  }
}

TEST(Model, ProjectionIsStoredSeededAndRedrawnOnSchedule) {
  ModelConfig c = TinyConfig(FeatureMap::kFavorPlus);
  c.redraw_interval = 3;
  PerformerLM a(c, 1), b(c, 2);
  // Saved with the weights (a buffer) and a function of feature_seed only.
  EXPECT_NE(a->named_buffers().find("projection"), nullptr);
  EXPECT_TRUE(at::equal(a->projection(), b->projection()));
  const at::Tensor draw0 = a->projection().clone();
  EXPECT_FALSE(a->MaybeRedrawFeatures(0));
  EXPECT_FALSE(a->MaybeRedrawFeatures(2));
  EXPECT_TRUE(a->MaybeRedrawFeatures(3));
  EXPECT_FALSE(at::equal(a->projection(), draw0));
  b->RedrawFeatures(1);
  EXPECT_TRUE(at::equal(a->projection(), b->projection()));
  a->RedrawFeatures(0);
  EXPECT_TRUE(at::equal(a->projection(), draw0));
  c.feature_seed = 9;
  EXPECT_FALSE(at::equal(PerformerLM(c, 1)->projection(), draw0));
}

TEST(Model, SameSeedSameWeights) {
  PerformerLM a(TinyConfig(FeatureMap::kSquare), 42), b(TinyConfig(FeatureMap::kSquare), 42),
      c(TinyConfig(FeatureMap::kSquare), 43);
  auto pa = a->parameters(), pb = b->parameters(), pc = c->parameters();
  bool any_differs = false;
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::equal(pa[i], pb[i]));
    any_differs |= !at::equal(pa[i], pc[i]);
  }
  EXPECT_TRUE(any_differs);
  EXPECT_EQ(static_cast<int64_t>(0), [&] {
    int64_t n = 0;
    for (auto& p : a->parameters()) n += p.numel();
    return n - a->config().ParameterCount();
  }());
}

// TensorShapes lists exactly what the constructor registers (model files are checked against
// it before a model is built).
TEST(Model, TensorShapesAreWhatTheModelRegisters) {
  ModelConfig tied = TinyConfig(FeatureMap::kSquare);
  tied.tie_embeddings = true;
  ModelConfig odd = TinyConfig(FeatureMap::kFavorPlus);
  odd.vocab_size = 300;
  odd.n_layers = 3;
  odd.d_ff = 48;
  odd.n_features = 5;
  std::vector<ModelConfig> configs = {TinyConfig(FeatureMap::kFavorPlus), tied, odd};
  for (const ModelConfig& c : testing::VariantConfigs()) configs.push_back(c);
  for (const ModelConfig& c : configs) {
    PerformerLM model(c, 1);
    std::map<std::string, std::vector<int64_t>> actual;
    for (const auto& p : model->named_parameters()) actual[p.key()] = p.value().sizes().vec();
    for (const auto& b : model->named_buffers()) actual[b.key()] = b.value().sizes().vec();
    EXPECT_EQ(PerformerLMImpl::TensorShapes(c), actual);
    int64_t parameters = 0;
    for (const auto& p : model->parameters()) parameters += p.numel();
    EXPECT_EQ(parameters, c.ParameterCount()) << testing::Describe(c);
  }
}

TEST(ModelConfig, ValidationNamesTheField) {
  ModelConfig c = TinyConfig(FeatureMap::kFavorPlus);
  c.n_heads = 3;
  try {
    c.Validate();
    FAIL() << "expected an error";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("d_model"), std::string::npos) << e.what();
  }
  c = TinyConfig(FeatureMap::kFavorPlus);
  c.n_features = 0;
  EXPECT_THROW(c.Validate(), EngineError);
  EXPECT_THROW(PresetConfig("huge"), EngineError);
  EXPECT_THROW(ParseFeatureMap("linear"), EngineError);
  const auto refusal = [](const ModelConfig& bad) {
    try {
      bad.Validate();
    } catch (const EngineError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  c = TinyConfig(FeatureMap::kFavorPlus);
  c.n_heads = 4;
  c.n_kv_heads = 3;
  EXPECT_NE(refusal(c).find("n_kv_heads: 3 does not divide n_heads 4"), std::string::npos) << refusal(c);
  c.n_kv_heads = 5;
  EXPECT_NE(refusal(c).find("n_kv_heads"), std::string::npos) << refusal(c);
  c = TinyConfig(FeatureMap::kFavorPlus);
  c.positions = PositionKind::kLearned;
  EXPECT_NE(refusal(c).find("max_positions"), std::string::npos) << refusal(c);
  c.positions = PositionKind::kRotary;
  c.max_positions = 10;
  EXPECT_NE(refusal(c).find("max_positions: only learned positions"), std::string::npos) << refusal(c);
  EXPECT_THROW(ParsePositionKind("alibi", "positions"), EngineError);
  EXPECT_EQ(ParseFeatureMap("elu+1"), FeatureMap::kEluPlusOne);
  const ModelConfig iv = PresetConfig("paper-iv");
  EXPECT_EQ(iv.d_model, 1024);
  EXPECT_EQ(iv.n_layers, 3);
  EXPECT_EQ(iv.n_heads, 16);
  EXPECT_EQ(iv.d_ff, 4096);
  EXPECT_EQ(iv.feature_map, FeatureMap::kSquare);
}

}  // namespace
}  // namespace slim

namespace slim {
namespace {

TEST(Lora, AdaptersStartAsIdentityAndAreTheOnlyTrainableWeights) {
  PerformerLM model(testing::TinyConfig(FeatureMap::kFavorPlus), 8);
  const testing::Batch b = testing::RandomBatch(2, 40, 256, 9);
  at::Tensor before;
  {
    at::NoGradGuard no_grad;
    before = model->Forward(b.tokens);
  }
  model->EnableLora(4, 8.0);
  EXPECT_TRUE(model->lora_enabled());
  EXPECT_THROW(model->EnableLora(4, 8.0), EngineError);
  int adapters = 0;
  for (const auto& p : model->named_parameters()) {
    const bool is_adapter = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), is_adapter) << p.key();
    adapters += is_adapter;
  }
  EXPECT_EQ(adapters, 2 * 6 * 2);  // a and b, six projections, two layers
  {
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(model->Forward(b.tokens), before));  // lora_b starts at zero
  }
  at::cross_entropy_loss(model->Forward(b.tokens).reshape({-1, 256}), b.targets.reshape({-1})).backward();
  for (const auto& p : model->named_parameters()) {
    const bool is_adapter = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().grad().defined(), is_adapter) << p.key();
  }
}

}  // namespace
}  // namespace slim
