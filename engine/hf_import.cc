#include "engine/hf_import.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <vector>

#include "base/errors.h"
#include "base/hf_config.h"
#include "base/json.h"
#include "engine/safetensors.h"

namespace slim {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void Invalid(const std::string& where, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, where + ": " + what);
}

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Invalid(path.string(), "cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Json ReadJsonFile(const fs::path& path) {
  try {
    return ParseJson(ReadText(path));
  } catch (const EngineError& e) {
    Invalid(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

std::string ShapeText(at::IntArrayRef shape) {
  std::ostringstream s;
  s << shape;
  return s.str();
}

// Where a checkpoint tensor goes: after an optional transpose (GPT-2's Conv1D stores in × out),
// rows row_offset .. row_offset + rows of each piece's slim tensor (its own first dimension).
struct Piece {
  std::string slim_name;
  int64_t row_offset = 0;
};
struct Destination {
  std::vector<int64_t> shape;  // as stored in the checkpoint
  bool transpose = false;
  std::vector<Piece> pieces;
};

// Checkpoint tensor name → destination, for every tensor the model needs.
std::map<std::string, Destination> TensorMap(const HfArchitecture& a, const ModelConfig& c) {
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size, KV = c.kv_dim();
  std::map<std::string, Destination> m;
  auto one = [&](const std::string& hf, std::vector<int64_t> shape, const std::string& slim, bool transpose = false) {
    m[hf] = {std::move(shape), transpose, {{slim, 0}}};
  };
  if (a.model_type == "gpt2") {
    one("wte.weight", {V, D}, "embed.weight");
    one("wpe.weight", {c.max_positions, D}, "pos_embed.weight");
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const std::string h = "h." + std::to_string(i) + ".", l = "layers." + std::to_string(i) + ".";
      for (const auto& [from, to] : {std::pair{"ln_1", "ln1"}, std::pair{"ln_2", "ln2"}}) {
        one(h + from + ".weight", {D}, l + to + ".weight");
        one(h + from + ".bias", {D}, l + to + ".bias");
      }
      // The fused projection: columns q | k | v of a (D, 3D) Conv1D weight.
      m[h + "attn.c_attn.weight"] = {{D, 3 * D}, true, {{l + "wq.weight", 0}, {l + "wk.weight", D}, {l + "wv.weight", 2 * D}}};
      m[h + "attn.c_attn.bias"] = {{3 * D}, false, {{l + "wq.bias", 0}, {l + "wk.bias", D}, {l + "wv.bias", 2 * D}}};
      one(h + "attn.c_proj.weight", {D, D}, l + "wo.weight", true);
      one(h + "attn.c_proj.bias", {D}, l + "wo.bias");
      one(h + "mlp.c_fc.weight", {D, F}, l + "w1.weight", true);
      one(h + "mlp.c_fc.bias", {F}, l + "w1.bias");
      one(h + "mlp.c_proj.weight", {F, D}, l + "w2.weight", true);
      one(h + "mlp.c_proj.bias", {D}, l + "w2.bias");
    }
    one("ln_f.weight", {D}, "ln_f.weight");
    one("ln_f.bias", {D}, "ln_f.bias");
  } else {  // llama, mistral, qwen2
    one("model.embed_tokens.weight", {V, D}, "embed.weight");
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const std::string h = "model.layers." + std::to_string(i) + ".", l = "layers." + std::to_string(i) + ".";
      one(h + "input_layernorm.weight", {D}, l + "ln1.weight");
      one(h + "self_attn.q_proj.weight", {D, D}, l + "wq.weight");
      one(h + "self_attn.k_proj.weight", {KV, D}, l + "wk.weight");
      one(h + "self_attn.v_proj.weight", {KV, D}, l + "wv.weight");
      one(h + "self_attn.o_proj.weight", {D, D}, l + "wo.weight");
      if (c.qkv_bias) {
        one(h + "self_attn.q_proj.bias", {D}, l + "wq.bias");
        one(h + "self_attn.k_proj.bias", {KV}, l + "wk.bias");
        one(h + "self_attn.v_proj.bias", {KV}, l + "wv.bias");
      }
      if (c.attn_out_bias) one(h + "self_attn.o_proj.bias", {D}, l + "wo.bias");
      one(h + "post_attention_layernorm.weight", {D}, l + "ln2.weight");
      one(h + "mlp.gate_proj.weight", {F, D}, l + "w1.weight");
      one(h + "mlp.up_proj.weight", {F, D}, l + "w3.weight");
      one(h + "mlp.down_proj.weight", {D, F}, l + "w2.weight");
    }
    one("model.norm.weight", {D}, "ln_f.weight");
  }
  if (!c.tie_embeddings) one("lm_head.weight", {V, D}, "head.weight");
  return m;
}

// Tensors checkpoints carry that are not weights: GPT-2's causal-mask buffers, old Llama
// checkpoints' rotary frequencies, and the output head of a tied model (transformers ties it
// to the embedding and ignores the stored copy).
bool Skipped(const std::string& name, const ModelConfig& c) {
  static const std::regex buffers(R"(h\.\d+\.attn\.(bias|masked_bias)|model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq)");
  return std::regex_match(name, buffers) || (c.tie_embeddings && name == "lm_head.weight");
}

// The safetensors files of the checkpoint: model.safetensors, or the shards its index names.
std::vector<fs::path> WeightFiles(const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors")) return {dir / "model.safetensors"};
  const fs::path index = dir / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    Invalid(dir.string(), "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are "
                          "supported; convert pytorch_model.bin with transformers' save_pretrained)");
  }
  const Json doc = ReadJsonFile(index);
  const auto map = doc.members.find("weight_map");
  if (doc.kind != Json::kObject || map == doc.members.end() || map->second.kind != Json::kObject) {
    Invalid(index.string(), "no weight_map object");
  }
  std::set<std::string> files;
  for (const auto& [tensor, file] : map->second.members) {
    if (file.kind != Json::kString || file.text.empty() || file.text.find('/') != std::string::npos ||
        file.text == "..") {
      Invalid(index.string(), "weight_map entry for '" + tensor + "' is not a file name in the directory");
    }
    files.insert(file.text);
  }
  std::vector<fs::path> out;
  for (const std::string& f : files) out.push_back(dir / f);
  return out;
}

}  // namespace

PerformerLM ImportHfCheckpoint(const std::string& dir_name, FeatureMap map, int64_t n_features) {
  const fs::path dir(dir_name);
  if (!fs::is_directory(dir)) Invalid(dir_name, "not a directory");
  HfArchitecture a;
  ModelConfig config;
  try {
    a = ReadHfConfig(ReadJsonFile(dir / "config.json"));
    config = ModelConfigFor(a, map, n_features);
  } catch (const EngineError& e) {
    Invalid((dir / "config.json").string(), e.what());
  }
  const std::map<std::string, Destination> destinations = TensorMap(a, config);
  PerformerLM model(config, /*init_seed=*/0);
  at::NoGradGuard no_grad;
  auto params = model->named_parameters();
  std::set<std::string> filled;
  for (const fs::path& file : WeightFiles(dir)) {
    VisitSafetensors(file.string(), "checkpoint", [&](const std::string& stored, at::Tensor t) {
      // GPT2LMHeadModel prefixes its body's tensors with "transformer.", GPT2Model does not.
      std::string name = stored;
      if (a.model_type == "gpt2" && name.rfind("transformer.", 0) == 0) name = name.substr(12);
      if (Skipped(name, config)) return;
      const auto d = destinations.find(name);
      if (d == destinations.end()) {
        Invalid(file.string(), "tensor '" + stored + "' is not part of a " + a.model_type +
                                   " model of this config (an unsupported variant, or a config that does not match)");
      }
      if (t.sizes() != at::IntArrayRef(d->second.shape)) {
        Invalid(file.string(), "tensor '" + stored + "' has shape " + ShapeText(t.sizes()) + ", the config implies " +
                                   ShapeText(d->second.shape));
      }
      if (filled.count(name)) Invalid(file.string(), "tensor '" + stored + "' appears twice");
      at::Tensor source = t.to(at::kFloat);
      if (d->second.transpose) source = source.t();
      for (const Piece& p : d->second.pieces) {
        at::Tensor& target = params[p.slim_name];
        target.copy_(source.narrow(0, p.row_offset, target.size(0)));
      }
      filled.insert(name);
    });
  }
  for (const auto& [name, d] : destinations) {
    if (!filled.count(name)) {
      Invalid(dir_name, "the checkpoint has no tensor '" + name + "'" +
                            (a.model_type == "gpt2" ? " (or 'transformer." + name + "')" : std::string()));
    }
  }
  return model;
}

void ExportHfCheckpoint(PerformerLMImpl& model, const std::string& dir_name) {
  CheckArgument(!model.lora_enabled(), "export-hf: the model has LoRA adapters; merge them first (slim-train merge)");
  const ModelConfig& c = model.config();
  const Json config = HfConfigFor(c);
  // The tensors that the same reader's architecture implies, so that import inverts export.
  const std::map<std::string, Destination> destinations = TensorMap(ReadHfConfig(config), c);
  const fs::path dir(dir_name);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw EngineError(ErrorCode::kInternal, dir_name + ": cannot create: " + ec.message());
  at::NoGradGuard no_grad;
  auto params = model.named_parameters();
  NamedTensorMap tensors;
  for (const auto& [name, d] : destinations) {
    std::vector<at::Tensor> pieces;
    for (const Piece& p : d.pieces) pieces.push_back(params[p.slim_name].detach().to(at::kCPU, at::kFloat));
    at::Tensor t = pieces.size() == 1 ? pieces[0] : at::cat(pieces, 0);
    tensors[name] = (d.transpose ? t.t() : t).contiguous();
  }
  WriteSafetensors((dir / "model.safetensors").string(), {{"format", "pt"}}, tensors);
  if (const auto& tokenizer = model.tokenizer_file()) {
    WriteFileAtomically((dir / (tokenizer->kind == TokenizerKind::kHfJson ? "tokenizer.json" : "tokenizer.model")).string(),
                        tokenizer->bytes);
  }
  WriteFileAtomically((dir / "config.json").string(), SerializeJson(config) + "\n");  // last: the directory is complete
}

}  // namespace slim
