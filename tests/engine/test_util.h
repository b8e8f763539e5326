// Helpers shared by the engine tests: relative errors, small configs, random batches.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "base/model_config.h"
#include "engine/causal_attention.h"

namespace slim::testing {

// max|a − b| / max|b|: a norm-wise relative error that stays meaningful when some entries of b
// are near zero (a per-element ratio would not).
inline double RelErr(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  const double diff = (a.to(b.scalar_type()) - b).abs().max().item<double>();
  return scale == 0.0 ? diff : diff / scale;
}

inline ModelConfig TinyConfig(FeatureMap map) {
  ModelConfig c = PresetConfig("tiny");
  c.feature_map = map;
  return c;
}

// The architecture variants besides the original layout (LayerNorm, exact GELU, rotary, no
// attention biases, one key/value head per query head): every norm, feed-forward and position
// kind, grouped- and multi-query attention and every bias appear at least once, in the
// combinations GPT-2, Llama and Qwen2 use.
inline std::vector<ModelConfig> VariantConfigs() {
  std::vector<ModelConfig> out;
  for (const auto& [norm, ffn] : {std::pair{NormKind::kRmsNorm, FfnKind::kSwiGlu},
                                  std::pair{NormKind::kLayerNorm, FfnKind::kGeluTanh},
                                  std::pair{NormKind::kRmsNorm, FfnKind::kGelu}}) {
    ModelConfig c = TinyConfig(FeatureMap::kFavorPlus);
    c.norm = norm;
    c.norm_eps = norm == NormKind::kRmsNorm ? 1e-6 : 1e-5;
    c.ffn = ffn;
    out.push_back(c);
  }
  // GPT-2: learned positions, biases on every attention projection, tied head.
  ModelConfig gpt2 = TinyConfig(FeatureMap::kFavorPlus);
  gpt2.ffn = FfnKind::kGeluTanh;
  gpt2.qkv_bias = gpt2.attn_out_bias = true;
  gpt2.positions = PositionKind::kLearned;
  gpt2.max_positions = 200;
  gpt2.tie_embeddings = true;
  out.push_back(gpt2);
  // Llama with grouped-query attention: 4 query heads in 2 groups.
  ModelConfig llama = TinyConfig(FeatureMap::kFavorPlus);
  llama.norm = NormKind::kRmsNorm;
  llama.norm_eps = 1e-6;
  llama.ffn = FfnKind::kSwiGlu;
  llama.n_heads = 4;
  llama.n_kv_heads = 2;
  out.push_back(llama);
  // Qwen2: multi-query (one key/value head) with q/k/v biases.
  ModelConfig qwen2 = llama;
  qwen2.n_heads = 2;
  qwen2.n_kv_heads = 1;
  qwen2.qkv_bias = true;
  out.push_back(qwen2);
  return out;
}

// Norm weights start at 1 and biases at 0; exactness tests perturb every parameter so that
// no term of the gradient is trivially zero.
inline void PerturbParameters(torch::nn::Module& model, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : model.parameters()) {
    p.add_(at::randn(p.sizes(), gen, at::kDouble).to(p.scalar_type()) * 0.05);
  }
}

inline std::string Describe(const ModelConfig& c) {
  return FeatureMapName(c.feature_map) + " " + NormKindName(c.norm) + "/" + FfnKindName(c.ffn) + "/" +
         PositionKindName(c.positions) + " heads " +
         std::to_string(c.n_heads) + "/" + std::to_string(c.kv_heads()) + (c.qkv_bias ? " qkv-bias" : "") +
         (c.attn_out_bias ? " out-bias" : "") + (c.tie_embeddings ? " tied" : "");
}

inline at::Generator Gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

struct Batch {
  at::Tensor tokens, targets;
};

// Random byte-level batch; targets are next tokens. With pad_tail > 0 the last sequence's final
// pad_tail targets are padding (ignore_index), as in a batch of unequal lengths.
inline Batch RandomBatch(int64_t batch, int64_t length, int64_t vocab, uint64_t seed,
                         int64_t pad_tail = 0) {
  at::Generator gen = Gen(seed);
  const at::Tensor ids = at::randint(vocab, {batch, length + 1}, gen, at::kLong);
  Batch b{ids.narrow(1, 0, length).contiguous(), ids.narrow(1, 1, length).clone()};
  if (pad_tail > 0) b.targets[batch - 1].narrow(0, length - pad_tail, pad_tail).fill_(-100);
  return b;
}

// A path in gtest's temporary directory, unique to this process.
inline std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "." + std::to_string(::getpid());
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// While alive, attention takes the ATen path CUDA runs instead of the CPU's BLAS loops.
class TorchAttentionPath {
 public:
  TorchAttentionPath() { ForceTorchAttentionPath(true); }
  ~TorchAttentionPath() { ForceTorchAttentionPath(false); }
  TorchAttentionPath(const TorchAttentionPath&) = delete;
  TorchAttentionPath& operator=(const TorchAttentionPath&) = delete;
};

}  // namespace slim::testing
