#include "base/hf_config.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <functional>
#include <set>

#include "base/errors.h"

namespace slim {
namespace {

constexpr int64_t kMaxVocabulary = 262144;

[[noreturn]] void Bad(const std::string& key, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, "config.json: " + key + ": " + what);
}

// A config with transformers' class defaults for absent keys (config.json files written by
// save_pretrained may leave out values equal to them).
class Config {
 public:
  explicit Config(const Json& doc) : doc_(doc) {
    if (doc.kind != Json::kObject) Bad("(top level)", "must be a JSON object, got " + DescribeJson(doc));
  }

  const Json* Find(const std::string& key) const {
    const auto it = doc_.members.find(key);
    return it == doc_.members.end() || it->second.kind == Json::kNull ? nullptr : &it->second;
  }
  bool Present(const std::string& key) const { return Find(key) != nullptr; }
  bool HasKey(const std::string& key) const { return doc_.members.count(key) > 0; }  // null included

  int64_t Int(const std::string& key, int64_t fallback, int64_t min) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (v->kind != Json::kNumber || v->number != std::floor(v->number) || std::fabs(v->number) > 9.0e15) {
      Bad(key, "must be an integer, got " + DescribeJson(*v));
    }
    const auto value = static_cast<int64_t>(v->number);
    if (value < min) Bad(key, "must be >= " + std::to_string(min) + ", got " + std::to_string(value));
    return value;
  }
  double Number(const std::string& key, double fallback) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (v->kind != Json::kNumber || !(v->number > 0)) Bad(key, "must be a positive number, got " + DescribeJson(*v));
    return v->number;
  }
  bool Bool(const std::string& key, bool fallback) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (v->kind != Json::kBool) Bad(key, "must be true or false, got " + DescribeJson(*v));
    return v->boolean;
  }
  std::string String(const std::string& key, const std::string& fallback) const {
    const Json* v = Find(key);
    if (v == nullptr) return fallback;
    if (v->kind != Json::kString) Bad(key, "must be a string, got " + DescribeJson(*v));
    return v->text;
  }

  // Refuses `key` when it is set (not null): a feature slim does not implement.
  void Unsupported(const std::string& key, const std::string& what) const {
    if (const Json* v = Find(key); v != nullptr) Bad(key, DescribeJson(*v) + ": " + what);
  }
  // Refuses `key` unless its value (or `fallback` when absent) is `expected`.
  void Require(const std::string& key, bool expected, bool fallback, const std::string& what) const {
    if (Bool(key, fallback) != expected) {
      Bad(key, std::string(expected ? "false" : "true") + (Present(key) ? "" : " (transformers' default)") + ": " + what);
    }
  }

 private:
  const Json& doc_;
};

void ReadGpt2(const Config& c, HfArchitecture* a) {
  a->vocab_size = c.Int("vocab_size", 50257, 1);
  a->d_model = c.Int("n_embd", 768, 1);
  a->n_layers = c.Int("n_layer", 12, 1);
  a->n_heads = c.Int("n_head", 12, 1);
  a->n_kv_heads = a->n_heads;
  a->d_ff = c.Int("n_inner", 4 * a->d_model, 1);
  a->norm = NormKind::kLayerNorm;
  a->norm_eps = c.Number("layer_norm_epsilon", 1e-5);
  const std::string act = c.String("activation_function", "gelu_new");
  if (act == "gelu") {
    a->ffn = FfnKind::kGelu;
  } else if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") {
    a->ffn = FfnKind::kGeluTanh;
  } else {
    Bad("activation_function", "'" + act + "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast)");
  }
  a->ffn_bias = true;
  a->qkv_bias = true;
  a->attn_out_bias = true;
  a->positions = PositionKind::kLearned;
  a->max_positions = c.Int("n_positions", 1024, 1);
  a->tie_embeddings = c.Bool("tie_word_embeddings", true);
  c.Require("scale_attn_weights", true, true, "attention scores without the 1/sqrt(head_dim) scale are not supported");
  c.Require("scale_attn_by_inverse_layer_idx", false, false, "per-layer score scaling is not supported");
  c.Require("add_cross_attention", false, false, "cross-attention (an encoder-decoder) is not supported");
}

// llama, mistral, qwen2: pre-norm RMSNorm, rotary positions, SwiGLU.
void ReadLlamaFamily(const Config& c, const std::string& type, HfArchitecture* a) {
  const bool llama = type == "llama", mistral = type == "mistral";
  a->vocab_size = c.Int("vocab_size", llama ? 32000 : mistral ? 32000 : 151936, 1);
  a->d_model = c.Int("hidden_size", 4096, 1);
  a->n_layers = c.Int("num_hidden_layers", 32, 1);
  a->n_heads = c.Int("num_attention_heads", 32, 1);
  a->n_kv_heads = c.Int("num_key_value_heads", mistral ? 8 : a->n_heads, 1);
  a->d_ff = c.Int("intermediate_size", llama ? 11008 : mistral ? 14336 : 22016, 1);
  a->norm = NormKind::kRmsNorm;
  a->norm_eps = c.Number("rms_norm_eps", 1e-6);
  const std::string act = c.String("hidden_act", "silu");
  if (act != "silu") Bad("hidden_act", "'" + act + "' is not supported (silu, for SwiGLU)");
  a->ffn = FfnKind::kSwiGlu;
  a->ffn_bias = false;
  if (llama) {
    if (c.Bool("mlp_bias", false)) Bad("mlp_bias", "true: SwiGLU with biases is not supported");
    a->qkv_bias = a->attn_out_bias = c.Bool("attention_bias", false);
  } else {
    a->qkv_bias = type == "qwen2";  // Qwen2: biases on q, k and v only
    a->attn_out_bias = false;
  }
  a->positions = PositionKind::kRotary;
  a->rope_theta = c.Number("rope_theta", 10000.0);
  a->max_positions = c.Int("max_position_embeddings", llama ? 2048 : mistral ? 131072 : 32768, 1);
  a->tie_embeddings = c.Bool("tie_word_embeddings", false);
  if (c.Present("head_dim") && c.Int("head_dim", 0, 1) * a->n_heads != a->d_model) {
    Bad("head_dim", std::to_string(c.Int("head_dim", 0, 1)) + " differs from hidden_size / num_attention_heads = " +
                        std::to_string(a->d_model / a->n_heads) + ", which slim requires");
  }
  c.Unsupported("rope_scaling", "scaled rotary positions (linear, dynamic, YaRN, llama3) are not supported");
  if (mistral) {
    // transformers' MistralConfig defaults sliding_window to 4096: an absent key is that
    // window, an explicit null is none.
    if (!c.HasKey("sliding_window")) {
      Bad("sliding_window", "absent, so transformers' default of 4096 applies: sliding-window attention is not "
                            "supported (a model trained without a window says null)");
    }
    c.Unsupported("sliding_window", "sliding-window attention is not supported; Performer attention sees every position");
  }
  if (type == "qwen2") c.Require("use_sliding_window", false, false, "sliding-window attention is not supported");
}

}  // namespace

HfArchitecture ReadHfConfig(const Json& doc) {
  const Config c(doc);
  HfArchitecture a;
  a.model_type = c.String("model_type", "");
  if (a.model_type == "gpt2") {
    ReadGpt2(c, &a);
  } else if (a.model_type == "llama" || a.model_type == "mistral" || a.model_type == "qwen2") {
    ReadLlamaFamily(c, a.model_type, &a);
  } else {
    Bad("model_type", (a.model_type.empty() ? std::string("missing") : "'" + a.model_type + "'") +
                          ": supported are gpt2, llama, mistral and qwen2");
  }
  // Keys of other families that change the math, refused wherever they appear.
  c.Unsupported("attn_logit_softcapping", "soft-capped attention logits are not supported");
  c.Unsupported("final_logit_softcapping", "soft-capped output logits are not supported");
  if (c.Present("partial_rotary_factor") && c.Number("partial_rotary_factor", 1) != 1) {
    Bad("partial_rotary_factor", "rotary positions on part of each head are not supported");
  }
  c.Require("is_encoder_decoder", false, false, "encoder-decoder models are not supported");

  if (a.vocab_size > kMaxVocabulary) {
    Bad("vocab_size", std::to_string(a.vocab_size) + " is above the largest supported, " + std::to_string(kMaxVocabulary));
  }
  const std::string heads = a.model_type == "gpt2" ? "n_head" : "num_attention_heads";
  if (a.d_model % a.n_heads != 0) {
    Bad(heads, std::to_string(a.n_heads) + " does not divide the model width " + std::to_string(a.d_model));
  }
  if (a.n_heads % a.n_kv_heads != 0) {
    Bad("num_key_value_heads", std::to_string(a.n_kv_heads) + " does not divide " + heads + " " +
                                   std::to_string(a.n_heads));
  }
  return a;
}

ModelConfig ModelConfigFor(const HfArchitecture& a, FeatureMap map, int64_t n_features) {
  if (a.ffn_bias != (a.ffn != FfnKind::kSwiGlu)) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "feed-forward: " + FfnKindName(a.ffn) + (a.ffn_bias ? " with" : " without") +
                          " biases is not supported (GELU has biases, SwiGLU none)");
  }
  ModelConfig c;
  c.vocab_size = a.vocab_size;
  c.d_model = a.d_model;
  c.n_layers = a.n_layers;
  c.n_heads = a.n_heads;
  c.n_kv_heads = a.n_kv_heads == a.n_heads ? 0 : a.n_kv_heads;
  c.d_ff = a.d_ff;
  c.feature_map = map;
  c.n_features = n_features;
  c.rope_base = a.rope_theta;
  c.tie_embeddings = a.tie_embeddings;
  c.norm = a.norm;
  c.norm_eps = a.norm_eps;
  c.ffn = a.ffn;
  c.qkv_bias = a.qkv_bias;
  c.attn_out_bias = a.attn_out_bias;
  c.positions = a.positions;
  c.max_positions = a.positions == PositionKind::kLearned ? a.max_positions : 0;
  c.Validate();
  return c;
}

}  // namespace slim

namespace slim {

HfArchitecture ReadHfConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return ReadHfConfig(ParseJson(text));
  } catch (const EngineError& e) {
    throw EngineError(ErrorCode::kInvalidArgument, path + ": " + e.what());
  }
}

Json HfConfigFor(const ModelConfig& c) {
  c.Validate();
  if (c.feature_map != FeatureMap::kSoftmax) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "feature_map: " + FeatureMapName(c.feature_map) +
                          " attention has no Hugging Face model type; only softmax models export");
  }
  Json j = JsonObject();
  auto set = [&](const std::string& key, double v) { j.members[key] = JsonNumber(v); };
  auto flag = [&](const std::string& key, bool v) {
    Json b;
    b.kind = Json::kBool;
    b.boolean = v;
    j.members[key] = b;
  };
  auto name = [&](const std::string& key, const std::string& v) { j.members[key] = JsonString(v); };
  auto architectures = [&](const std::string& v) {
    Json list = JsonArray();
    list.items.push_back(JsonString(v));
    j.members["architectures"] = list;
  };
  const bool gpt2 = c.positions == PositionKind::kLearned && c.norm == NormKind::kLayerNorm &&
                    c.ffn != FfnKind::kSwiGlu && c.qkv_bias && c.attn_out_bias && c.kv_heads() == c.n_heads;
  const bool llama_family = c.positions == PositionKind::kRotary && c.norm == NormKind::kRmsNorm && c.ffn == FfnKind::kSwiGlu;
  if (gpt2) {
    name("model_type", "gpt2");
    architectures("GPT2LMHeadModel");
    set("vocab_size", static_cast<double>(c.vocab_size));
    set("n_embd", static_cast<double>(c.d_model));
    set("n_layer", static_cast<double>(c.n_layers));
    set("n_head", static_cast<double>(c.n_heads));
    set("n_inner", static_cast<double>(c.d_ff));
    set("n_positions", static_cast<double>(c.max_positions));
    set("layer_norm_epsilon", c.norm_eps);
    name("activation_function", c.ffn == FfnKind::kGeluTanh ? "gelu_new" : "gelu");
    flag("tie_word_embeddings", c.tie_embeddings);
    return j;
  }
  if (llama_family && (c.qkv_bias || !c.attn_out_bias)) {  // no type has an output bias alone
    const bool qwen2 = c.qkv_bias && !c.attn_out_bias;
    name("model_type", qwen2 ? "qwen2" : "llama");
    architectures(qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
    set("vocab_size", static_cast<double>(c.vocab_size));
    set("hidden_size", static_cast<double>(c.d_model));
    set("num_hidden_layers", static_cast<double>(c.n_layers));
    set("num_attention_heads", static_cast<double>(c.n_heads));
    set("num_key_value_heads", static_cast<double>(c.kv_heads()));
    set("intermediate_size", static_cast<double>(c.d_ff));
    set("rms_norm_eps", c.norm_eps);
    set("rope_theta", c.rope_base);
    // slim's rotary positions have no end; transformers wants a number (advisory for it too).
    set("max_position_embeddings", 131072);
    name("hidden_act", "silu");
    flag("tie_word_embeddings", c.tie_embeddings);
    if (qwen2) {
      flag("use_sliding_window", false);
    } else {
      flag("attention_bias", c.qkv_bias);
    }
    return j;
  }
  throw EngineError(ErrorCode::kInvalidArgument,
                    "this model's layout (" + PositionKindName(c.positions) + " positions, " + NormKindName(c.norm) +
                        ", " + FfnKindName(c.ffn) + (c.qkv_bias ? ", q/k/v biases" : "") +
                        (c.attn_out_bias ? ", output bias" : "") +
                        ") is none of the Hugging Face types slim exports (gpt2, llama, qwen2)");
}

}  // namespace slim
