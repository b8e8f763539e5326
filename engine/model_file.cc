#include "engine/model_file.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <sstream>

#include "engine/errors.h"
#include "engine/safetensors.h"

namespace slim {
namespace {

constexpr char kWhat[] = "model file";

// `kind` names the file in messages: "model file", "checkpoint".
[[noreturn]] void Invalid(const std::string& kind, const std::string& path, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, kind + " " + path + ": " + what);
}

}  // namespace

SafetensorsMetadata ModelConfigMetadata(const ModelConfig& c) {
  return {{"format", "slim"},
          {"format_version", "1"},
          {"vocab_size", std::to_string(c.vocab_size)},
          {"d_model", std::to_string(c.d_model)},
          {"n_layers", std::to_string(c.n_layers)},
          {"n_heads", std::to_string(c.n_heads)},
          {"d_ff", std::to_string(c.d_ff)},
          {"feature_map", FeatureMapName(c.feature_map)},
          {"n_features", std::to_string(c.n_features)},
          {"rope_base", [&] { std::ostringstream s; s.precision(17); s << c.rope_base; return s.str(); }()},
          {"tie_embeddings", c.tie_embeddings ? "true" : "false"},
          {"attention_block", std::to_string(c.attention_block)},
          {"redraw_interval", std::to_string(c.redraw_interval)},
          {"feature_seed", std::to_string(c.feature_seed)}};
}

namespace {

ModelConfig ConfigFromMetadata(const SafetensorsMetadata& m, const std::string& path, const std::string& kind) {
  auto get = [&](const std::string& key) -> std::string {
    const auto it = m.find(key);
    if (it == m.end()) Invalid(kind, path, "metadata has no '" + key + "'");
    return it->second;
  };
  auto integer = [&](const std::string& key) -> int64_t {
    const std::string v = get(key);
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') Invalid(kind, path, "metadata '" + key + "' is not an integer: '" + v + "'");
    return n;
  };
  if (get("format") != "slim") Invalid(kind, path, "metadata format is '" + get("format") + "', not 'slim'");
  if (get("format_version") != "1") Invalid(kind, path, "unsupported format_version '" + get("format_version") + "'");
  ModelConfig c;
  c.vocab_size = integer("vocab_size");
  c.d_model = integer("d_model");
  c.n_layers = integer("n_layers");
  c.n_heads = integer("n_heads");
  c.d_ff = integer("d_ff");
  c.n_features = integer("n_features");
  c.rope_base = std::strtod(get("rope_base").c_str(), nullptr);
  c.tie_embeddings = get("tie_embeddings") == "true";
  c.attention_block = integer("attention_block");
  c.redraw_interval = integer("redraw_interval");
  c.feature_seed = static_cast<uint64_t>(std::strtoull(get("feature_seed").c_str(), nullptr, 10));
  try {
    c.feature_map = ParseFeatureMap(get("feature_map"));
    c.Validate();
  } catch (const EngineError& e) {
    Invalid(kind, path, std::string("config in metadata is invalid: ") + e.what());
  }
  return c;
}

}  // namespace

NamedTensorMap ModelTensors(PerformerLMImpl& model, const std::string& prefix) {
  NamedTensorMap out;
  for (const auto& p : model.named_parameters()) out[prefix + p.key()] = p.value();
  for (const auto& b : model.named_buffers()) out[prefix + b.key()] = b.value();
  return out;
}

void SaveModelFile(PerformerLMImpl& model, const std::string& path) {
  CheckArgument(!model.lora_enabled(), "model file: merge or drop LoRA adapters before saving");
  WriteSafetensors(path, ModelConfigMetadata(model.config()), ModelTensors(model));
}

PerformerLM ModelFromContents(const SafetensorsContents& file, const std::string& path,
                              const std::string& kind, const std::string& prefix) {
  const ModelConfig config = ConfigFromMetadata(file.metadata, path, kind);
  PerformerLM model(config, /*init_seed=*/0);
  const NamedTensorMap expected = ModelTensors(*model, prefix);
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind(prefix, 0) != 0) continue;  // not a model tensor (e.g. optimizer state)
    const auto want = expected.find(name);
    if (want == expected.end()) Invalid(kind, path, "unexpected tensor '" + name + "' for this config");
    if (t.sizes() != want->second.sizes()) {
      std::ostringstream msg;
      msg << "tensor '" << name << "' has shape " << t.sizes() << " but the config needs " << want->second.sizes();
      Invalid(kind, path, msg.str());
    }
  }
  for (const auto& [name, t] : expected) {
    if (!file.tensors.count(name)) Invalid(kind, path, "missing tensor '" + name + "'");
  }
  const at::ScalarType dtype = file.tensors.at(prefix + "embed.weight").scalar_type();
  for (const auto& [name, t] : expected) {
    if (file.tensors.at(name).scalar_type() != dtype) Invalid(kind, path, "tensor '" + name + "' is not stored in the model's dtype");
  }
  // Only now, with every tensor read and checked, is the model touched.
  at::NoGradGuard no_grad;
  if (dtype != at::kFloat) model->to(dtype);
  for (auto& [name, t] : ModelTensors(*model, prefix)) t.copy_(file.tensors.at(name));
  return model;
}

PerformerLM LoadModelFile(const std::string& path) {
  return ModelFromContents(ReadSafetensors(path, kWhat), path, kWhat);
}

}  // namespace slim
