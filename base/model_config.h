// Configuration of a causal Performer language model (docs/engine.md). Plain C++: safe to
// include from code that must not see LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace slim {

// Feature map φ applied to rotary-embedded queries and keys.
enum class FeatureMap {
  kFavorPlus,  // positive orthogonal random features, n_features per head (FAVOR+)
  kRelu,       // relu(x) + 1e-3, deterministic, M = head_dim
  kEluPlusOne, // elu(x) + 1, deterministic, M = head_dim
  kSquare,     // x², deterministic, M = head_dim (the SLiM paper's experiments)
  // Learned (T2R/Hedgehog-style): per layer and head a trainable projection W (M/2 × d),
  // φ(x) = softmax([W x̃, −W x̃]) over the M features, x̃ = x·d^{-1/4}. Initialised with favor+'s
  // random orthogonal rows, where it estimates the softmax kernel like favor+ (the per-key
  // normaliser matches favor+'s e^{−‖x̃‖²/2} in expectation), then trained with the model
  // (LoRA jobs train it beside the adapters). M = n_features, even.
  kLearned,
  // Not a feature map: exact causal softmax attention, quadratic in length, as pretrained
  // Transformers compute it — the reference mode of imported models (evaluation, generation,
  // ordinary training before conversion). It has no prefix-sum state, so SLiM cannot train it
  // in slices: only with ordinary backprop (chunk = sequence length).
  kSoftmax,
};

std::string FeatureMapName(FeatureMap map);
// Parses "favor+", "relu", "elu+1", "sqr", "learned", "softmax"; throws EngineError(kInvalidArgument)
// otherwise.
FeatureMap ParseFeatureMap(const std::string& name);

// The normalisation before attention, before the feed-forward and before the head.
enum class NormKind {
  kLayerNorm,  // (x − mean) / sqrt(var + eps) · weight + bias
  kRmsNorm,    // x / sqrt(mean(x²) + eps) · weight (Llama family)
};
// The feed-forward block.
enum class FfnKind {
  kGelu,      // w2 · GELU(w1 · x + b1) + b2, GELU in its exact (erf) form
  kGeluTanh,  // the same with GELU's tanh approximation (GPT-2's "gelu_new")
  kSwiGlu,    // w2 · (SiLU(w1 · x) ⊙ w3 · x), no biases (Llama family; w1 is the gate, w3 "up")
};
// How positions enter the model.
enum class PositionKind {
  kRotary,   // rotary embeddings of queries and keys (base rope_base); any sequence length
  kLearned,  // a learned absolute position embedding added to the token embedding (GPT-2):
             // max_positions of them, so longer sequences are refused
};
std::string NormKindName(NormKind kind);          // "layernorm", "rmsnorm"
std::string FfnKindName(FfnKind kind);            // "gelu", "gelu_tanh", "swiglu"
std::string PositionKindName(PositionKind kind);  // "rotary", "learned"
// Parse the names above; EngineError(kInvalidArgument) naming `field` otherwise.
NormKind ParseNormKind(const std::string& name, const std::string& field);
FfnKind ParseFfnKind(const std::string& name, const std::string& field);
PositionKind ParsePositionKind(const std::string& name, const std::string& field);

struct ModelConfig {
  int64_t vocab_size = 256;  // bytes by default
  int64_t d_model = 32;
  int64_t n_layers = 2;
  int64_t n_heads = 2;
  int64_t d_ff = 64;
  FeatureMap feature_map = FeatureMap::kFavorPlus;
  int64_t n_features = 16;  // M per head for favor+ and learned; deterministic maps use head_dim
  double rope_base = 10000.0;
  bool tie_embeddings = false;
  NormKind norm = NormKind::kLayerNorm;
  double norm_eps = 1e-5;
  FfnKind ffn = FfnKind::kGelu;
  // Key/value heads: grouped-query attention when fewer than n_heads (query head j uses
  // key/value head j / (n_heads / kv_heads)); 1 is multi-query. 0 means n_heads.
  int64_t n_kv_heads = 0;
  bool qkv_bias = false;       // biases on the query, key and value projections
  bool attn_out_bias = false;  // a bias on the attention output projection
  PositionKind positions = PositionKind::kRotary;
  int64_t max_positions = 0;   // learned positions: how many (the longest sequence); else 0
  // Tokens per block of the block-form causal attention (intra-block masked matmul,
  // inter-block prefix state). Chunk sizes chosen by the planner are multiples of it.
  int64_t attention_block = 64;
  // favor+ projections are redrawn every `redraw_interval` training steps (0 = never),
  // from a generator seeded with (feature_seed, draw index) so runs are reproducible.
  int64_t redraw_interval = 1000;
  uint64_t feature_seed = 0;

  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int64_t kv_dim() const { return kv_heads() * head_dim(); }  // width of the key and value projections
  // M: features per head actually used by the attention (softmax: the head dim, for the
  // key/value cache that takes the state's place).
  int64_t features_per_head() const {
    return feature_map == FeatureMap::kFavorPlus || feature_map == FeatureMap::kLearned ? n_features : head_dim();
  }
  // The learned feature map's trainable parameters (0 for the other maps).
  int64_t FeatureParameterCount() const {
    return feature_map == FeatureMap::kLearned ? n_layers * n_heads * (n_features / 2) * head_dim() : 0;
  }
  int64_t ParameterCount() const;

  // Throws EngineError(kInvalidArgument) naming the first field out of range.
  void Validate() const;
};

// Named presets: "tiny" (tests), "mini" (the shipped demo base model), "small", "paper-iv"
// (the SLiM paper's configuration IV).
ModelConfig PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();

}  // namespace slim
