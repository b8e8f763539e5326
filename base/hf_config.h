// Hugging Face model configs (`config.json`) read into the architecture they describe, for
// importing pretrained checkpoints (issue 21; docs/model-format.md, "Hugging Face configs").
// Supported model types: gpt2, llama, mistral, qwen2. Every key that changes the model's math
// is either mapped or refused by name — a checkpoint is never imported as a different model —
// while keys that do not (token ids, dtypes, generation defaults, tokenizer classes) are
// ignored. Plain C++; no LibTorch.
#pragma once

#include <cstdint>
#include <string>

#include "base/json.h"
#include "base/model_config.h"

namespace slim {

// NormKind, FfnKind and PositionKind: base/model_config.h.

struct HfArchitecture {
  std::string model_type;  // as in the config: gpt2, llama, mistral, qwen2
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // grouped-query attention when below n_heads (1: multi-query)
  int64_t d_ff = 0;
  NormKind norm = NormKind::kLayerNorm;
  double norm_eps = 1e-5;
  FfnKind ffn = FfnKind::kGelu;
  bool ffn_bias = false;
  bool qkv_bias = false;          // biases on the query, key and value projections
  bool attn_out_bias = false;     // a bias on the attention output projection
  PositionKind positions = PositionKind::kRotary;
  double rope_theta = 10000.0;    // rotary only
  int64_t max_positions = 0;      // learned: the longest sequence it has positions for; rotary: the config's (advisory)
  bool tie_embeddings = false;    // the output head is the token embedding

  int64_t head_dim() const { return d_model / n_heads; }
};

// Reads a parsed config.json. Throws EngineError(kInvalidArgument) naming the key for a
// missing or mistyped value, an unsupported model_type, and every key whose value changes the
// math in a way slim does not implement (e.g. rope_scaling, sliding_window, logit soft-capping).
HfArchitecture ReadHfConfig(const Json& config);
// The same for a config.json file; errors name the path.
HfArchitecture ReadHfConfigFile(const std::string& path);

// The slim model that computes `a` with attention `map` (softmax: exactly the checkpoint's
// function; a Performer feature map: its conversion) and, for favor+, `n_features` features per
// head. Rotary models keep no max_positions (slim's rotary positions have no end); learned
// positions keep the table's length. Throws EngineError(kInvalidArgument) for what the engine
// cannot represent (a GELU feed-forward without biases, SwiGLU with them).
ModelConfig ModelConfigFor(const HfArchitecture& a, FeatureMap map, int64_t n_features);

// The inverse, for exporting a slim model as a Hugging Face checkpoint: the config.json of the
// model type that computes `c` — gpt2 (learned positions, LayerNorm, GELU with biases, q/k/v
// and output biases), qwen2 (rotary, RMSNorm, SwiGLU, q/k/v biases only) or llama (the same
// with no attention biases, or all of them). ReadHfConfig of the result gives back `c`'s
// architecture. Throws EngineError(kInvalidArgument) for a Performer feature map (Hugging Face
// has no such models; convert back by importing, not exporting) or a layout none of these types
// has, naming what differs.
Json HfConfigFor(const ModelConfig& c);

}  // namespace slim
