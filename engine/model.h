// A decoder-only causal Performer language model (docs/engine.md), pre-norm:
//   x = Embed(tokens) (+ PositionEmbed(positions) with learned positions)
//   per layer: x = x + W_o·CausalFavorAttention(N1(x));  x = x + FFN(N2(x))
//   logits = Head(N_f(x))
// with N a LayerNorm or an RMSNorm and FFN W2·GELU(W1·h + b1) + b2 (exact or tanh GELU) or
// SwiGLU W2·(SiLU(W1·h) ⊙ W3·h) (config.norm, config.ffn); attention with rotary or learned
// positions, optional q/k/v and output biases, and grouped-query key/value heads.
// Every op except the attention prefix sums acts on one position at a time, so the model
// exposes its forward pass in pieces (Embed / Project / Mix / Logits) that run on a slice of
// positions from a carried per-layer AttentionState: the SLiM step composes them.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/attention_features.h"
#include "engine/causal_attention.h"
#include "base/model_config.h"
#include "base/tokenizer_file.h"

namespace slim {

// What one layer's attention needs from its input slice: features and values per head.
struct LayerProjections {
  at::Tensor phi_q;  // (B, H, T, M), state dtype; undefined if not requested
  at::Tensor phi_k;  // (B, H, T, M), state dtype
  at::Tensor v;      // (B, H, T, d), activation dtype
};

using ModelState = std::vector<AttentionState>;  // one per layer

// Parameters that a LoRA job trains and its adapter file carries: the adapters
// ("....lora_a/lora_b") and a learned feature map's projections ("layers.<i>.features").
bool IsTrainedWithAdapters(const std::string& parameter_name);

class PerformerLMImpl : public torch::nn::Module {
 public:
  // Weights are drawn from a generator seeded with `init_seed` (independent of global RNG);
  // favor+ projections from config.feature_seed (draw 0).
  PerformerLMImpl(const ModelConfig& config, uint64_t init_seed);

  // The name and shape of every parameter and buffer the constructor registers for `config`
  // (no adapters), computed without allocating: loaders check a file against these before they
  // build a model, so a small file declaring a huge config is refused, not allocated. Agrees
  // with named_parameters() and named_buffers() (ModelTest checks).
  static std::map<std::string, std::vector<int64_t>> TensorShapes(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  int64_t n_layers() const { return config_.n_layers; }

  // tokens (B, T) int64 at global positions offset.. → (B, T, d_model); with learned positions
  // plus their position embeddings (EngineError(kInvalidArgument) past max_positions).
  at::Tensor Embed(const at::Tensor& tokens, int64_t offset);
  // N1, q/k/v projections (k and v of kv_heads heads, expanded to one per query head), rotary
  // at global positions offset.. (rotary positions only), features.
  LayerProjections Project(int64_t layer, const at::Tensor& x, int64_t offset,
                           bool need_query = true);
  // Attention from `start` (writes the end state to *end), W_o, residual, then the FFN block.
  // block_deltas: optional AttentionBlockDeltas(p.phi_k, p.v, state dtype, attention_block)
  // that the caller already computed (see CausalLinearAttention).
  at::Tensor Mix(int64_t layer, const at::Tensor& x, const LayerProjections& p,
                 const AttentionState& start, AttentionState* end,
                 const at::Tensor& block_deltas = {});
  // Final norm and output head: (B, T, d_model) → (B, T, vocab); Logits = linear(FinalNorm(x),
  // HeadWeight()).
  at::Tensor Logits(const at::Tensor& x);
  at::Tensor FinalNorm(const at::Tensor& x);
  const at::Tensor& HeadWeight() const;  // (vocab, d_model): the embedding when tied

  // Zero state for a batch, in the state dtype, on the model's device (softmax attention: an
  // empty key/value cache).
  ModelState ZeroState(int64_t batch) const;
  // Runs a slice of tokens at global positions offset.. from *state, updating it in place.
  // With T = 1 this is recurrent (token-by-token) decoding. ForwardSlice = Logits(HiddenSlice):
  // the hidden states (B, T, d_model) before the final norm and head.
  at::Tensor ForwardSlice(const at::Tensor& tokens, int64_t offset, ModelState* state);
  at::Tensor HiddenSlice(const at::Tensor& tokens, int64_t offset, ModelState* state);
  // Whole sequence from the zero state.
  at::Tensor Forward(const at::Tensor& tokens);

  // The favor+ projections (n_layers, H, M, d); a registered buffer, so saved with the weights.
  const at::Tensor& projection() const { return projection_; }
  // Redraws the favor+ projections deterministically for draw number `draw_index`.
  void RedrawFeatures(int64_t draw_index);
  // Applies the redraw schedule at the start of training step `step` (0-based): redraws when
  // step > 0 and step % redraw_interval == 0. Returns true if it redrew.
  bool MaybeRedrawFeatures(int64_t step);

  // Adds LoRA adapters of rank `rank` to the attention and FFN projections named in `targets`
  // ("wq", "wk", "wv", "wo", "w1", "w2", and "w3" with SwiGLU; empty = all the model has) and
  // freezes all other parameters except a learned feature map's (IsTrainedWithAdapters).
  // Adapters are parameters named "layers.<i>.<proj>.lora_a" (rank × in, N(0, 1/in)) and
  // ".lora_b" (out × rank, zeros), so the model computes the same function until they train;
  // their output is scaled by alpha / rank. Deterministic in the model's init seed. Throws
  // EngineError(kInvalidArgument) for a rank outside [1, d_model], an alpha that is not a finite
  // number > 0, an unknown target, or when already enabled.
  void EnableLora(int64_t rank, double alpha, const std::vector<std::string>& targets = {});
  int64_t lora_rank() const { return lora_rank_; }
  double lora_alpha() const { return lora_alpha_; }
  // The projections that carry adapters, in the order wq, wk, wv, wo, w1, w2, w3.
  std::vector<std::string> lora_targets() const;
  // A new model without adapters computing the same function: W + (alpha/rank)·B·A for each
  // adapted projection, every other tensor copied. Requires lora_enabled().
  std::shared_ptr<PerformerLMImpl> MergedCopy();
  bool lora_enabled() const { return lora_rank_ > 0; }

  at::ScalarType activation_dtype() const;
  at::ScalarType state_dtype() const { return StateDtype(activation_dtype()); }

  // The tokenizer the model's ids belong to (docs/model-format.md), or null for models whose
  // ids are bytes or come pre-tokenised. Not a tensor: model files store it beside the weights,
  // and it travels with the model through training, checkpoints and MergedCopy. Immutable once
  // set, so copies share it.
  const std::shared_ptr<const TokenizerFile>& tokenizer_file() const { return tokenizer_file_; }
  void set_tokenizer_file(std::shared_ptr<const TokenizerFile> file) { tokenizer_file_ = std::move(file); }

 private:
  // A LayerNorm (parameters "weight" and "bias") or an RMSNorm ("weight"), per config.norm.
  struct NormImpl : torch::nn::Module {
    NormImpl(int64_t dim, NormKind kind, double eps);
    at::Tensor forward(const at::Tensor& x);
    NormKind kind;
    double eps;
    at::Tensor weight, bias;
  };
  // One decoder layer's weights; a submodule so parameters are named "layers.<i>.<name>".
  struct LayerImpl : torch::nn::Module {
    explicit LayerImpl(const ModelConfig& config);
    std::shared_ptr<NormImpl> ln1, ln2;
    torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};
    torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};  // w3: SwiGLU only
    // The learned feature map's projection (H, M/2, d), parameter "features"; undefined for the
    // other maps.
    at::Tensor features;
    // LoRA adapters (EnableLora), indexed by Projection; undefined until enabled.
    struct Adapter {
      at::Tensor a, b;  // (rank, in), (out, rank)
    };
    std::array<Adapter, 7> lora;
  };

  using Layer = LayerImpl;
  enum Projection { kQ, kK, kV, kO, kW1, kW2, kW3 };
  static constexpr int kProjections = 7;
  // The layer's Linear for `which` (w3 is null without SwiGLU).
  static torch::nn::Linear& Linear(Layer& l, Projection which);
  // x·Wᵀ (+ bias) of projection `which`, plus scale·(x·Aᵀ)·Bᵀ when adapters are enabled.
  at::Tensor Apply(Layer& l, Projection which, const at::Tensor& x);
  at::Tensor LoraDelta(Layer& l, Projection which, const at::Tensor& x);
  bool HasAdapter(const Layer& l, Projection which) const;

  ModelConfig config_;
  torch::nn::Embedding embed_{nullptr};
  torch::nn::Embedding pos_embed_{nullptr};  // learned positions only
  std::vector<std::shared_ptr<Layer>> layers_;
  std::shared_ptr<NormImpl> ln_f_;
  torch::nn::Linear head_{nullptr};  // null when tie_embeddings
  at::Tensor projection_;
  RotaryCache rotary_cache_;  // cos/sin of the slice being processed
  uint64_t init_seed_;
  int64_t lora_rank_ = 0;
  double lora_alpha_ = 0;
  double lora_scale_ = 0;
  std::shared_ptr<const TokenizerFile> tokenizer_file_;
};

TORCH_MODULE(PerformerLM);

}  // namespace slim
