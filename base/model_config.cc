#include "base/model_config.h"

#include <sstream>

#include "base/errors.h"

namespace slim {

std::string FeatureMapName(FeatureMap map) {
  switch (map) {
    case FeatureMap::kFavorPlus: return "favor+";
    case FeatureMap::kRelu: return "relu";
    case FeatureMap::kEluPlusOne: return "elu+1";
    case FeatureMap::kSquare: return "sqr";
    case FeatureMap::kLearned: return "learned";
    case FeatureMap::kSoftmax: return "softmax";
  }
  return "unknown";
}

FeatureMap ParseFeatureMap(const std::string& name) {
  for (FeatureMap map : {FeatureMap::kFavorPlus, FeatureMap::kRelu, FeatureMap::kEluPlusOne,
                         FeatureMap::kSquare, FeatureMap::kLearned, FeatureMap::kSoftmax}) {
    if (FeatureMapName(map) == name) return map;
  }
  throw EngineError(ErrorCode::kInvalidArgument,
                    "feature_map: unknown value '" + name +
                        "' (allowed: favor+, relu, elu+1, sqr, learned, softmax)");
}

std::string NormKindName(NormKind kind) { return kind == NormKind::kLayerNorm ? "layernorm" : "rmsnorm"; }

std::string FfnKindName(FfnKind kind) {
  switch (kind) {
    case FfnKind::kGelu: return "gelu";
    case FfnKind::kGeluTanh: return "gelu_tanh";
    case FfnKind::kSwiGlu: return "swiglu";
  }
  return "unknown";
}

std::string PositionKindName(PositionKind kind) { return kind == PositionKind::kRotary ? "rotary" : "learned"; }

PositionKind ParsePositionKind(const std::string& name, const std::string& field) {
  for (PositionKind kind : {PositionKind::kRotary, PositionKind::kLearned}) {
    if (PositionKindName(kind) == name) return kind;
  }
  throw EngineError(ErrorCode::kInvalidArgument, field + ": unknown value '" + name + "' (allowed: rotary, learned)");
}

NormKind ParseNormKind(const std::string& name, const std::string& field) {
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRmsNorm}) {
    if (NormKindName(kind) == name) return kind;
  }
  throw EngineError(ErrorCode::kInvalidArgument, field + ": unknown value '" + name + "' (allowed: layernorm, rmsnorm)");
}

FfnKind ParseFfnKind(const std::string& name, const std::string& field) {
  for (FfnKind kind : {FfnKind::kGelu, FfnKind::kGeluTanh, FfnKind::kSwiGlu}) {
    if (FfnKindName(kind) == name) return kind;
  }
  throw EngineError(ErrorCode::kInvalidArgument,
                    field + ": unknown value '" + name + "' (allowed: gelu, gelu_tanh, swiglu)");
}

int64_t ModelConfig::ParameterCount() const {
  const int64_t norm_size = norm == NormKind::kLayerNorm ? 2 * d_model : d_model;  // weight (+ bias)
  const int64_t ffn_size = ffn == FfnKind::kSwiGlu ? 3 * d_model * d_ff               // gate, up, down
                                                   : 2 * d_model * d_ff + d_ff + d_model;  // with biases
  const int64_t attention = 2 * d_model * d_model + 2 * d_model * kv_dim()  // q, o; k, v
                            + (qkv_bias ? d_model + 2 * kv_dim() : 0) + (attn_out_bias ? d_model : 0);
  const int64_t per_layer = attention + ffn_size + 2 * norm_size;
  const int64_t embed = vocab_size * d_model + (positions == PositionKind::kLearned ? max_positions * d_model : 0);
  const int64_t head = tie_embeddings ? 0 : vocab_size * d_model;
  return embed + n_layers * per_layer + norm_size + head + FeatureParameterCount();
}

namespace {
void CheckRange(const char* field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    std::ostringstream msg;
    msg << field << ": " << value << " is out of range [" << lo << ", " << hi << "]";
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
}
}  // namespace

void ModelConfig::Validate() const {
  CheckRange("vocab_size", vocab_size, 2, int64_t{1} << 24);
  CheckRange("d_model", d_model, 2, 65536);
  CheckRange("n_layers", n_layers, 1, 1024);
  CheckRange("n_heads", n_heads, 1, d_model);
  CheckRange("d_ff", d_ff, 1, 1 << 20);
  CheckRange("attention_block", attention_block, 1, 65536);
  CheckRange("redraw_interval", redraw_interval, 0, int64_t{1} << 40);
  if (d_model % n_heads != 0) {
    std::ostringstream msg;
    msg << "d_model: " << d_model << " is not divisible by n_heads " << n_heads;
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
  if (head_dim() % 2 != 0) {
    std::ostringstream msg;
    msg << "d_model/n_heads: head dimension " << head_dim()
        << " must be even (rotary embeddings rotate pairs)";
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
  CheckRange("n_kv_heads", n_kv_heads, 0, n_heads);
  if (n_heads % kv_heads() != 0) {
    std::ostringstream msg;
    msg << "n_kv_heads: " << n_kv_heads << " does not divide n_heads " << n_heads;
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
  if (positions == PositionKind::kLearned) {
    CheckRange("max_positions", max_positions, 1, int64_t{1} << 24);
  } else if (max_positions != 0) {
    throw EngineError(ErrorCode::kInvalidArgument, "max_positions: only learned positions have a maximum");
  }
  if (feature_map == FeatureMap::kFavorPlus) CheckRange("n_features", n_features, 1, 1 << 16);
  if (feature_map == FeatureMap::kLearned) {
    CheckRange("n_features", n_features, 2, 1 << 16);
    if (n_features % 2 != 0) {
      throw EngineError(ErrorCode::kInvalidArgument,
                        "n_features: the learned feature map needs an even number (pairs ±W x), got " +
                            std::to_string(n_features));
    }
  }
  if (!(norm_eps > 0 && norm_eps < 1)) {
    std::ostringstream msg;
    msg << "norm_eps: " << norm_eps << " must be in (0, 1)";
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
  if (!(rope_base > 1.0)) {
    std::ostringstream msg;
    msg << "rope_base: " << rope_base << " must be > 1";
    throw EngineError(ErrorCode::kInvalidArgument, msg.str());
  }
}

ModelConfig PresetConfig(const std::string& name) {
  ModelConfig c;
  if (name == "tiny") {
    c.d_model = 32; c.n_layers = 2; c.n_heads = 2; c.d_ff = 64;
    c.feature_map = FeatureMap::kFavorPlus; c.n_features = 16; c.attention_block = 16;
  } else if (name == "mini") {
    // The shipped demo base model (models/README.md): 0.86M parameters, 3.6 MB in fp32.
    c.d_model = 128; c.n_layers = 4; c.n_heads = 4; c.d_ff = 512;
    c.feature_map = FeatureMap::kFavorPlus; c.n_features = 64; c.attention_block = 64;
  } else if (name == "small") {
    c.d_model = 256; c.n_layers = 4; c.n_heads = 4; c.d_ff = 1024;
    c.feature_map = FeatureMap::kFavorPlus; c.n_features = 128; c.attention_block = 64;
  } else if (name == "paper-iv") {
    // SLiM paper, configuration IV: d_ff = 4·d_model, heads = d_model/64, sqr features.
    c.d_model = 1024; c.n_layers = 3; c.n_heads = 16; c.d_ff = 4096;
    c.feature_map = FeatureMap::kSquare; c.n_features = 64; c.attention_block = 64;
  } else {
    std::string allowed;
    for (const auto& n : PresetNames()) allowed += (allowed.empty() ? "" : ", ") + n;
    throw EngineError(ErrorCode::kInvalidArgument,
                      "preset: unknown name '" + name + "' (allowed: " + allowed + ")");
  }
  return c;
}

std::vector<std::string> PresetNames() { return {"tiny", "mini", "small", "paper-iv"}; }

}  // namespace slim
