#include "engine/model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/activation.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/attention_features.h"
#include "engine/softmax_attention.h"
#include "base/errors.h"

namespace slim {

namespace {
constexpr double kInitStd = 0.02;
}  // namespace

PerformerLMImpl::NormImpl::NormImpl(int64_t dim, NormKind kind_in, double eps_in) : kind(kind_in), eps(eps_in) {
  weight = register_parameter("weight", at::ones({dim}));
  if (kind == NormKind::kLayerNorm) bias = register_parameter("bias", at::zeros({dim}));
}

at::Tensor PerformerLMImpl::NormImpl::forward(const at::Tensor& x) {
  if (kind == NormKind::kLayerNorm) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  // RMSNorm in at least fp32 (as the Llama family computes it), back in x's dtype.
  const at::Tensor xf = x.to(at::promote_types(x.scalar_type(), at::kFloat));
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return normed.to(x.scalar_type()) * weight;
}

PerformerLMImpl::LayerImpl::LayerImpl(const ModelConfig& c) {
  using torch::nn::LinearOptions;
  const int64_t D = c.d_model, F = c.d_ff;
  const bool swiglu = c.ffn == FfnKind::kSwiGlu;
  ln1 = register_module("ln1", std::make_shared<NormImpl>(D, c.norm, c.norm_eps));
  const int64_t KV = c.kv_dim();
  wq = register_module("wq", torch::nn::Linear(LinearOptions(D, D).bias(c.qkv_bias)));
  wk = register_module("wk", torch::nn::Linear(LinearOptions(D, KV).bias(c.qkv_bias)));
  wv = register_module("wv", torch::nn::Linear(LinearOptions(D, KV).bias(c.qkv_bias)));
  wo = register_module("wo", torch::nn::Linear(LinearOptions(D, D).bias(c.attn_out_bias)));
  ln2 = register_module("ln2", std::make_shared<NormImpl>(D, c.norm, c.norm_eps));
  w1 = register_module("w1", torch::nn::Linear(LinearOptions(D, F).bias(!swiglu)));
  w2 = register_module("w2", torch::nn::Linear(LinearOptions(F, D).bias(!swiglu)));
  if (swiglu) w3 = register_module("w3", torch::nn::Linear(LinearOptions(D, F).bias(false)));
  if (c.feature_map == FeatureMap::kLearned) {
    features = register_parameter("features", at::zeros({c.n_heads, c.n_features / 2, c.head_dim()}));
  }
}

bool IsTrainedWithAdapters(const std::string& name) {
  const std::string suffix = ".features";
  return name.find(".lora_") != std::string::npos ||
         (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
}

torch::nn::Linear& PerformerLMImpl::Linear(Layer& l, Projection which) {
  torch::nn::Linear* lin[] = {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3};
  return *lin[which];
}

PerformerLMImpl::PerformerLMImpl(const ModelConfig& config, uint64_t init_seed)
    : config_(config), init_seed_(init_seed) {
  config_.Validate();
  const int64_t D = config_.d_model;
  embed_ = register_module("embed", torch::nn::Embedding(config_.vocab_size, D));
  if (config_.positions == PositionKind::kLearned) {
    pos_embed_ = register_module("pos_embed", torch::nn::Embedding(config_.max_positions, D));
  }
  torch::nn::ModuleList layers;
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    layers_.push_back(std::make_shared<Layer>(config_));
    layers->push_back(layers_.back());
  }
  register_module("layers", layers);
  ln_f_ = register_module("ln_f", std::make_shared<NormImpl>(D, config_.norm, config_.norm_eps));
  if (!config_.tie_embeddings) {
    head_ = register_module(
        "head", torch::nn::Linear(torch::nn::LinearOptions(D, config_.vocab_size).bias(false)));
  }

  // Deterministic init from our own generator: weights N(0, 0.02), biases 0, norms 1/0.
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(init_seed);
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& t = item.value();
    const bool is_norm = name.find("ln") != std::string::npos;
    if (is_norm) {
      t.fill_(name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0 ? 1.0 : 0.0);
    } else if (t.dim() == 1) {
      t.zero_();
    } else {
      t.normal_(0.0, kInitStd, gen);
    }
  }
  // A learned feature map starts from favor+'s orthogonal rows (draw 0 of feature_seed).
  if (config_.feature_map == FeatureMap::kLearned) {
    const at::Tensor rows = DrawOrthogonalProjection(config_.n_layers, config_.n_heads, config_.n_features / 2,
                                                     config_.head_dim(), config_.feature_seed);
    for (int64_t i = 0; i < config_.n_layers; ++i) layers_[i]->features.copy_(rows[i]);
  }
  // Deterministic and learned maps use no projection buffer; it stays zero so model files look alike.
  projection_ = register_buffer(
      "projection", at::zeros({config_.n_layers, config_.n_heads, config_.features_per_head(),
                               config_.head_dim()}));
  RedrawFeatures(0);
}

std::map<std::string, std::vector<int64_t>> PerformerLMImpl::TensorShapes(const ModelConfig& config) {
  config.Validate();
  const int64_t D = config.d_model, F = config.d_ff, V = config.vocab_size, KV = config.kv_dim();
  std::map<std::string, std::vector<int64_t>> shapes;
  shapes["embed.weight"] = {V, D};
  if (config.positions == PositionKind::kLearned) shapes["pos_embed.weight"] = {config.max_positions, D};
  for (int64_t i = 0; i < config.n_layers; ++i) {
    const std::string layer = "layers." + std::to_string(i) + ".";
    for (const char* norm : {"ln1", "ln2"}) {
      shapes[layer + norm + ".weight"] = {D};
      if (config.norm == NormKind::kLayerNorm) shapes[layer + norm + ".bias"] = {D};
    }
    shapes[layer + "wq.weight"] = {D, D};
    shapes[layer + "wk.weight"] = {KV, D};
    shapes[layer + "wv.weight"] = {KV, D};
    shapes[layer + "wo.weight"] = {D, D};
    if (config.qkv_bias) {
      shapes[layer + "wq.bias"] = {D};
      shapes[layer + "wk.bias"] = {KV};
      shapes[layer + "wv.bias"] = {KV};
    }
    if (config.attn_out_bias) shapes[layer + "wo.bias"] = {D};
    shapes[layer + "w1.weight"] = {F, D};
    shapes[layer + "w2.weight"] = {D, F};
    if (config.ffn == FfnKind::kSwiGlu) {
      shapes[layer + "w3.weight"] = {F, D};
    } else {
      shapes[layer + "w1.bias"] = {F};
      shapes[layer + "w2.bias"] = {D};
    }
  }
  shapes["ln_f.weight"] = {D};
  if (config.norm == NormKind::kLayerNorm) shapes["ln_f.bias"] = {D};
  if (!config.tie_embeddings) shapes["head.weight"] = {V, D};
  if (config.feature_map == FeatureMap::kLearned) {
    for (int64_t i = 0; i < config.n_layers; ++i) {
      shapes["layers." + std::to_string(i) + ".features"] = {config.n_heads, config.n_features / 2, config.head_dim()};
    }
  }
  shapes["projection"] = {config.n_layers, config.n_heads, config.features_per_head(), config.head_dim()};
  return shapes;
}

at::ScalarType PerformerLMImpl::activation_dtype() const {
  return embed_->weight.scalar_type();
}

at::Tensor PerformerLMImpl::Embed(const at::Tensor& tokens, int64_t offset) {
  const at::Tensor x = embed_->forward(tokens);
  if (config_.positions != PositionKind::kLearned) return x;
  const int64_t T = tokens.size(1);
  if (offset < 0 || offset + T > config_.max_positions) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "positions " + std::to_string(offset) + ".." + std::to_string(offset + T - 1) +
                          " are beyond the model's learned positions (max_positions " +
                          std::to_string(config_.max_positions) + ")");
  }
  return x + pos_embed_->weight.narrow(0, offset, T);
}

LayerProjections PerformerLMImpl::Project(int64_t layer, const at::Tensor& x, int64_t offset,
                                          bool need_query) {
  Layer& l = *layers_.at(layer);
  const int64_t B = x.size(0), T = x.size(1), H = config_.n_heads, d = config_.head_dim();
  const at::Tensor h = l.ln1->forward(x);
  // q, k and v as one matmul against the stacked weights (one pass over h, one larger GEMM
  // forwards and backwards; autograd splits the weight gradient back to wq/wk/wv).
  std::vector<at::Tensor> weights, biases;
  std::vector<int64_t> widths;
  for (Projection which : need_query ? std::vector<Projection>{kQ, kK, kV} : std::vector<Projection>{kK, kV}) {
    weights.push_back(Linear(l, which)->weight);
    if (config_.qkv_bias) biases.push_back(Linear(l, which)->bias);
    widths.push_back(which == kQ ? config_.d_model : config_.kv_dim());
  }
  const at::Tensor w = weights.size() == 1 ? weights[0] : at::cat(weights);
  const at::Tensor b = biases.empty() ? at::Tensor() : at::cat(biases);
  std::vector<at::Tensor> qkv = at::linear(h, w, b).split_with_sizes(widths, -1);
  if (lora_enabled()) {
    const std::vector<Projection> which =
        need_query ? std::vector<Projection>{kQ, kK, kV} : std::vector<Projection>{kK, kV};
    for (size_t i = 0; i < which.size(); ++i) {
      if (HasAdapter(l, which[i])) qkv[i] = qkv[i] + LoraDelta(l, which[i], h);
    }
  }
  // (B, T, heads·d) → (B, heads, T, d).
  auto heads = [&](const at::Tensor& t, int64_t n) { return t.view({B, T, n, d}).transpose(1, 2); };
  // Grouped-query attention: key/value head g serves query heads g·group .. g·group + group − 1.
  const int64_t group = H / config_.kv_heads();
  auto per_query_head = [&](const at::Tensor& t) { return group == 1 ? t : t.repeat_interleave(group, 1); };
  const bool rotary = config_.positions == PositionKind::kRotary;
  auto rotate = [&](const at::Tensor& t) {
    return rotary ? ApplyRotary(t, offset, config_.rope_base, &rotary_cache_) : t;
  };
  const at::ScalarType sd = state_dtype();
  const at::Tensor proj = config_.feature_map == FeatureMap::kLearned ? l.features : projection_[layer];
  LayerProjections p;
  const size_t k_index = need_query ? 1 : 0;
  // Rotary before the expansion: rotating a key/value head once serves its whole group.
  const at::Tensor k = per_query_head(rotate(heads(qkv[k_index], config_.kv_heads()).to(sd)));
  p.phi_k = KeyFeatures(config_.feature_map, k, proj, sd);
  if (need_query) {
    const at::Tensor q = rotate(heads(qkv[0], H).to(sd));
    p.phi_q = QueryFeatures(config_.feature_map, q, proj, sd);
  }
  p.v = per_query_head(heads(qkv[k_index + 1], config_.kv_heads()));
  return p;
}

at::Tensor PerformerLMImpl::Mix(int64_t layer, const at::Tensor& x, const LayerProjections& p,
                                const AttentionState& start, AttentionState* end,
                                const at::Tensor& block_deltas) {
  Layer& l = *layers_.at(layer);
  AttentionOutput a = config_.feature_map == FeatureMap::kSoftmax
                          ? CausalSoftmaxAttention(p.phi_q, p.phi_k, p.v, start)
                          : CausalLinearAttention(p.phi_q, p.phi_k, p.v, start, config_.attention_block, block_deltas);
  if (end != nullptr) *end = std::move(a.end);
  const int64_t B = x.size(0), T = x.size(1);
  const at::Tensor merged = a.out.transpose(1, 2).reshape({B, T, config_.d_model}).to(x.scalar_type());
  at::Tensor y = x + Apply(l, kO, merged);
  const at::Tensor h = l.ln2->forward(y);
  at::Tensor inner;
  switch (config_.ffn) {
    case FfnKind::kGelu: inner = at::gelu(Apply(l, kW1, h)); break;
    case FfnKind::kGeluTanh: inner = at::gelu(Apply(l, kW1, h), "tanh"); break;
    case FfnKind::kSwiGlu: inner = at::silu(Apply(l, kW1, h)) * Apply(l, kW3, h); break;
  }
  return y + Apply(l, kW2, inner);
}

at::Tensor PerformerLMImpl::LoraDelta(Layer& l, Projection which, const at::Tensor& x) {
  const Layer::Adapter& a = l.lora[which];
  return at::linear(at::linear(x, a.a), a.b) * lora_scale_;
}

bool PerformerLMImpl::HasAdapter(const Layer& l, Projection which) const {
  return l.lora[which].a.defined();
}

at::Tensor PerformerLMImpl::Apply(Layer& l, Projection which, const at::Tensor& x) {
  at::Tensor y = Linear(l, which)->forward(x);
  return HasAdapter(l, which) ? y + LoraDelta(l, which, x) : y;
}

namespace {
// Names of the projections in Projection order, as in tensor names and job specs.
constexpr const char* kProjectionNames[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
}  // namespace

void PerformerLMImpl::EnableLora(int64_t rank, double alpha, const std::vector<std::string>& targets) {
  CheckArgument(!lora_enabled(), "lora: adapters are already enabled");
  CheckArgument(rank >= 1 && rank <= config_.d_model,
                "lora_rank: " + std::to_string(rank) + " is out of range [1, " +
                    std::to_string(config_.d_model) + "]");
  CheckArgument(std::isfinite(alpha) && alpha > 0, "lora_alpha: must be a finite number > 0, got " + std::to_string(alpha));
  const bool swiglu = config_.ffn == FfnKind::kSwiGlu;
  const int projections = swiglu ? kProjections : kProjections - 1;  // w3 only with SwiGLU
  std::array<bool, kProjections> wanted{};
  for (int i = 0; i < projections; ++i) wanted[i] = targets.empty();
  for (const std::string& t : targets) {
    bool known = false;
    for (int i = 0; i < projections; ++i) {
      if (t == kProjectionNames[i]) wanted[i] = known = true;
    }
    CheckArgument(known, "lora_targets: unknown projection '" + t + "' (allowed: wq, wk, wv, wo, w1, w2" +
                             (swiglu ? ", w3)" : ")"));
  }
  at::NoGradGuard no_grad;
  for (auto& p : named_parameters()) p.value().requires_grad_(IsTrainedWithAdapters(p.key()));
  // Seeded from the init seed, so two models built alike get the same adapters (a projection's
  // adapter does not depend on which other projections are targeted).
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(init_seed_ ^ 0x4C6F5241ull);
  const auto options = embed_->weight.options();
  for (auto& layer : layers_) {
    for (int i = 0; i < projections; ++i) {
      torch::nn::LinearImpl& impl = *Linear(*layer, static_cast<Projection>(i));
      const int64_t in = impl.weight.size(1), out = impl.weight.size(0);
      const at::Tensor a = at::randn({rank, in}, gen, at::kFloat) / std::sqrt(static_cast<double>(in));
      if (!wanted[i]) continue;
      Layer::Adapter& adapter = layer->lora[i];
      adapter.a = impl.register_parameter("lora_a", a.to(options));
      adapter.b = impl.register_parameter("lora_b", at::zeros({out, rank}, options));
    }
  }
  lora_rank_ = rank;
  lora_alpha_ = alpha;
  lora_scale_ = alpha / static_cast<double>(rank);
}

std::vector<std::string> PerformerLMImpl::lora_targets() const {
  std::vector<std::string> out;
  if (!lora_enabled()) return out;
  for (int i = 0; i < kProjections; ++i) {
    if (HasAdapter(*layers_.front(), static_cast<Projection>(i))) out.push_back(kProjectionNames[i]);
  }
  return out;
}

std::shared_ptr<PerformerLMImpl> PerformerLMImpl::MergedCopy() {
  CheckArgument(lora_enabled(), "lora: the model has no adapters to merge");
  auto merged = std::make_shared<PerformerLMImpl>(config_, init_seed_);
  merged->tokenizer_file_ = tokenizer_file_;
  at::NoGradGuard no_grad;
  merged->to(embed_->weight.device(), embed_->weight.scalar_type());
  const auto source_params = named_parameters();
  for (auto& item : merged->named_parameters()) item.value().copy_(source_params[item.key()]);
  const auto source_buffers = named_buffers();
  for (auto& item : merged->named_buffers()) item.value().copy_(source_buffers[item.key()]);
  for (size_t r = 0; r < layers_.size(); ++r) {
    Layer& from = *layers_[r];
    Layer& to = *merged->layers_[r];
    for (int i = 0; i < kProjections; ++i) {
      if (!HasAdapter(from, static_cast<Projection>(i))) continue;
      const Layer::Adapter& a = from.lora[i];
      // W' = W + scale · B·A, in fp32 or wider, then stored in the weight's dtype.
      const at::ScalarType acc = at::promote_types(a.b.scalar_type(), at::kFloat);
      at::Tensor& w = Linear(to, static_cast<Projection>(i))->weight;
      w.copy_(w.to(acc) + at::matmul(a.b.to(acc), a.a.to(acc)) * lora_scale_);
    }
  }
  return merged;
}

at::Tensor PerformerLMImpl::Logits(const at::Tensor& x) { return at::linear(FinalNorm(x), HeadWeight()); }

at::Tensor PerformerLMImpl::FinalNorm(const at::Tensor& x) { return ln_f_->forward(x); }

const at::Tensor& PerformerLMImpl::HeadWeight() const {
  return config_.tie_embeddings ? embed_->weight : head_->weight;
}

ModelState PerformerLMImpl::ZeroState(int64_t batch) const {
  const auto options = at::TensorOptions().dtype(state_dtype()).device(embed_->weight.device());
  ModelState state;
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    if (config_.feature_map == FeatureMap::kSoftmax) {
      state.push_back(EmptySoftmaxCache(batch, config_.n_heads, config_.head_dim(), options));
      continue;
    }
    state.push_back(ZeroAttentionState(batch, config_.n_heads, config_.features_per_head(),
                                       config_.head_dim(), options));
  }
  return state;
}

at::Tensor PerformerLMImpl::ForwardSlice(const at::Tensor& tokens, int64_t offset,
                                         ModelState* state) {
  return Logits(HiddenSlice(tokens, offset, state));
}

at::Tensor PerformerLMImpl::HiddenSlice(const at::Tensor& tokens, int64_t offset, ModelState* state) {
  at::Tensor x = Embed(tokens, offset);
  for (int64_t r = 0; r < config_.n_layers; ++r) {
    const LayerProjections p = Project(r, x, offset);
    AttentionState end;
    x = Mix(r, x, p, (*state)[r], &end);
    (*state)[r] = std::move(end);
  }
  return x;
}

at::Tensor PerformerLMImpl::Forward(const at::Tensor& tokens) {
  ModelState state = ZeroState(tokens.size(0));
  return ForwardSlice(tokens, 0, &state);
}

void PerformerLMImpl::RedrawFeatures(int64_t draw_index) {
  if (config_.feature_map != FeatureMap::kFavorPlus) return;
  at::NoGradGuard no_grad;
  // Draw i of a model is a pure function of (feature_seed, i).
  const uint64_t seed = config_.feature_seed * 0x100000001B3ull + static_cast<uint64_t>(draw_index);
  projection_.copy_(DrawOrthogonalProjection(config_.n_layers, config_.n_heads,
                                             config_.features_per_head(), config_.head_dim(), seed));
}

bool PerformerLMImpl::MaybeRedrawFeatures(int64_t step) {
  if (config_.feature_map != FeatureMap::kFavorPlus || config_.redraw_interval <= 0 ||
      step <= 0 || step % config_.redraw_interval != 0) {
    return false;
  }
  RedrawFeatures(step / config_.redraw_interval);
  return true;
}

}  // namespace slim
