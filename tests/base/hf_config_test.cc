// Hugging Face config.json files read into the architecture they describe: the published
// configs of GPT-2, Llama 3, Mistral and Qwen2 as they are on the Hub, and every key that
// changes the math refused by name.
#include "base/hf_config.h"

#include <gtest/gtest.h>

#include <string>

#include "base/errors.h"
#include "base/json.h"

namespace slim {
namespace {

// openai-community/gpt2
constexpr char kGpt2[] = R"({"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
  "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024,
  "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
  "summary_activation": null, "summary_first_dropout": 0.1, "summary_proj_to_labels": true,
  "summary_type": "cls_index", "summary_use_proj": true,
  "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}}, "vocab_size": 50257})";

// meta-llama/Meta-Llama-3-8B
constexpr char kLlama3[] = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
  "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0", "use_cache": true, "vocab_size": 128256})";

// mistralai/Mistral-7B-v0.1
constexpr char kMistral[] = R"({"architectures": ["MistralForCausalLM"], "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

// Qwen/Qwen2-0.5B
constexpr char kQwen2[] = R"({"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
  "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 131072,
  "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

HfArchitecture Read(const std::string& text) { return ReadHfConfig(ParseJson(text)); }

// The message of the error reading `text` throws ("" if it reads).
std::string Refusal(const std::string& text) {
  try {
    Read(text);
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

// `base` with `key` set to the JSON `value` (added or replaced).
std::string With(const std::string& base, const std::string& key, const std::string& value) {
  Json doc = ParseJson(base);
  doc.members[key] = ParseJson(value);
  return SerializeJson(doc);
}
std::string Without(const std::string& base, const std::string& key) {
  Json doc = ParseJson(base);
  doc.members.erase(key);
  return SerializeJson(doc);
}

TEST(HfConfig, Gpt2IsLearnedPositionsLayerNormAndTanhGeluWithBiasesAndATiedHead) {
  const HfArchitecture a = Read(kGpt2);
  EXPECT_EQ(a.model_type, "gpt2");
  EXPECT_EQ(a.vocab_size, 50257);
  EXPECT_EQ(a.d_model, 768);
  EXPECT_EQ(a.n_layers, 12);
  EXPECT_EQ(a.n_heads, 12);
  EXPECT_EQ(a.n_kv_heads, 12);
  EXPECT_EQ(a.head_dim(), 64);
  EXPECT_EQ(a.d_ff, 3072) << "n_inner absent: 4 × n_embd";
  EXPECT_EQ(a.norm, NormKind::kLayerNorm);
  EXPECT_DOUBLE_EQ(a.norm_eps, 1e-5);
  EXPECT_EQ(a.ffn, FfnKind::kGeluTanh);
  EXPECT_TRUE(a.ffn_bias && a.qkv_bias && a.attn_out_bias);
  EXPECT_EQ(a.positions, PositionKind::kLearned);
  EXPECT_EQ(a.max_positions, 1024);
  EXPECT_TRUE(a.tie_embeddings);
  EXPECT_EQ(Read(With(kGpt2, "activation_function", "\"gelu\"")).ffn, FfnKind::kGelu);
  EXPECT_EQ(Read(With(kGpt2, "n_inner", "2048")).d_ff, 2048);
  EXPECT_EQ(Read(With(kGpt2, "n_inner", "null")).d_ff, 3072);
}

TEST(HfConfig, Llama3IsRmsNormSwiGluRotaryWithGroupedQueryAttention) {
  const HfArchitecture a = Read(kLlama3);
  EXPECT_EQ(a.vocab_size, 128256);
  EXPECT_EQ(a.n_heads, 32);
  EXPECT_EQ(a.n_kv_heads, 8);
  EXPECT_EQ(a.d_ff, 14336);
  EXPECT_EQ(a.norm, NormKind::kRmsNorm);
  EXPECT_DOUBLE_EQ(a.norm_eps, 1e-5);
  EXPECT_EQ(a.ffn, FfnKind::kSwiGlu);
  EXPECT_FALSE(a.ffn_bias || a.qkv_bias || a.attn_out_bias);
  EXPECT_EQ(a.positions, PositionKind::kRotary);
  EXPECT_DOUBLE_EQ(a.rope_theta, 500000.0);
  EXPECT_FALSE(a.tie_embeddings);
  const HfArchitecture biased = Read(With(kLlama3, "attention_bias", "true"));
  EXPECT_TRUE(biased.qkv_bias && biased.attn_out_bias);
  EXPECT_EQ(Read(Without(kLlama3, "num_key_value_heads")).n_kv_heads, 32) << "absent: one per query head";
  EXPECT_EQ(Read(With(kLlama3, "num_key_value_heads", "1")).n_kv_heads, 1);
}

TEST(HfConfig, Qwen2HasQueryKeyValueBiasesOnlyAndATiedHead) {
  const HfArchitecture a = Read(kQwen2);
  EXPECT_EQ(a.d_model, 896);
  EXPECT_EQ(a.head_dim(), 64);
  EXPECT_EQ(a.n_kv_heads, 2);
  EXPECT_TRUE(a.qkv_bias);
  EXPECT_FALSE(a.attn_out_bias);
  EXPECT_TRUE(a.tie_embeddings);
  EXPECT_DOUBLE_EQ(a.rope_theta, 1e6);
  EXPECT_NE(Refusal(With(kQwen2, "use_sliding_window", "true")).find("config.json: use_sliding_window: true"),
            std::string::npos);
}

TEST(HfConfig, MistralIsReadOnlyWithoutASlidingWindow) {
  EXPECT_NE(Refusal(kMistral).find("config.json: sliding_window: 4096: sliding-window attention is not supported"),
            std::string::npos)
      << Refusal(kMistral);
  EXPECT_NE(Refusal(Without(kMistral, "sliding_window")).find("transformers' default of 4096"), std::string::npos);
  const HfArchitecture a = Read(With(kMistral, "sliding_window", "null"));
  EXPECT_EQ(a.n_kv_heads, 8);
  EXPECT_EQ(a.ffn, FfnKind::kSwiGlu);
  EXPECT_FALSE(a.qkv_bias);
}

TEST(HfConfig, KeysThatChangeTheMathAreRefusedByName) {
  const std::string llama31_scaling =
      R"({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})";
  const struct {
    std::string config;
    std::string message;
  } cases[] = {
      {With(kLlama3, "rope_scaling", llama31_scaling), "config.json: rope_scaling: a mapping: scaled rotary positions"},
      {With(kLlama3, "head_dim", "256"), "config.json: head_dim: 256 differs from hidden_size / num_attention_heads = 128"},
      {With(kLlama3, "hidden_act", "\"gelu\""), "config.json: hidden_act: 'gelu' is not supported"},
      {With(kLlama3, "mlp_bias", "true"), "config.json: mlp_bias: true"},
      {With(kLlama3, "attn_logit_softcapping", "50.0"), "config.json: attn_logit_softcapping: 50: soft-capped"},
      {With(kLlama3, "final_logit_softcapping", "30.0"), "config.json: final_logit_softcapping"},
      {With(kLlama3, "partial_rotary_factor", "0.5"), "config.json: partial_rotary_factor"},
      {With(kGpt2, "activation_function", "\"relu\""), "config.json: activation_function: 'relu' is not supported"},
      {With(kGpt2, "scale_attn_by_inverse_layer_idx", "true"), "config.json: scale_attn_by_inverse_layer_idx: true"},
      {With(kGpt2, "scale_attn_weights", "false"), "config.json: scale_attn_weights: false"},
      {With(kGpt2, "add_cross_attention", "true"), "config.json: add_cross_attention"},
      {With(kGpt2, "model_type", "\"bert\""), "config.json: model_type: 'bert': supported are gpt2, llama, mistral and qwen2"},
      {Without(kGpt2, "model_type"), "config.json: model_type: missing"},
      {With(kGpt2, "n_head", "7"), "config.json: n_head: 7 does not divide the model width 768"},
      {With(kLlama3, "num_key_value_heads", "5"), "config.json: num_key_value_heads: 5 does not divide num_attention_heads 32"},
      {With(kLlama3, "vocab_size", "300000"), "config.json: vocab_size: 300000 is above the largest supported, 262144"},
      {With(kGpt2, "n_embd", "\"768\""), "config.json: n_embd: must be an integer, got '768'"},
      {With(kGpt2, "n_layer", "1.5"), "config.json: n_layer: must be an integer, got 1.5"},
      {With(kGpt2, "n_layer", "0"), "config.json: n_layer: must be >= 1, got 0"},
      {With(kGpt2, "layer_norm_epsilon", "-1"), "config.json: layer_norm_epsilon: must be a positive number"},
      {"[1, 2]", "config.json: (top level): must be a JSON object"},
  };
  for (const auto& c : cases) {
    const std::string refusal = Refusal(c.config);
    EXPECT_NE(refusal.find(c.message), std::string::npos) << "want: " << c.message << "\ngot: " << refusal;
  }
}

}  // namespace
}  // namespace slim
