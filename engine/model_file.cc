#include "engine/model_file.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <map>
#include <vector>
#include <sstream>

#include "base/errors.h"
#include "engine/safetensors.h"

namespace slim {
namespace {

constexpr char kWhat[] = "model file";
// Metadata key (the kind) and tensor name (the file's bytes) of the tokenizer.
constexpr char kTokenizerKey[] = "tokenizer";

// `kind` names the file in messages: "model file", "checkpoint".
[[noreturn]] void Invalid(const std::string& kind, const std::string& path, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, kind + " " + path + ": " + what);
}

}  // namespace

SafetensorsMetadata ModelConfigMetadata(const ModelConfig& c) {
  SafetensorsMetadata m = {{"format", "slim"},
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
  // The architecture variants are written only where they differ from the original layout
  // (LayerNorm with eps 1e-5, exact GELU), so files of that layout stay byte for byte as they were.
  const ModelConfig original;
  if (c.norm != original.norm) m["norm"] = NormKindName(c.norm);
  if (c.norm_eps != original.norm_eps) {
    std::ostringstream s;
    s.precision(17);
    s << c.norm_eps;
    m["norm_eps"] = s.str();
  }
  if (c.ffn != original.ffn) m["ffn"] = FfnKindName(c.ffn);
  if (c.kv_heads() != c.n_heads) m["n_kv_heads"] = std::to_string(c.kv_heads());
  if (c.qkv_bias) m["qkv_bias"] = "true";
  if (c.attn_out_bias) m["attn_out_bias"] = "true";
  if (c.positions != original.positions) {
    m["positions"] = PositionKindName(c.positions);
    m["max_positions"] = std::to_string(c.max_positions);
  }
  return m;
}

SafetensorsMetadata LoraMetadata(const PerformerLMImpl& model) {
  if (!model.lora_enabled()) return {};
  std::string targets;
  for (const std::string& t : model.lora_targets()) targets += (targets.empty() ? "" : ",") + t;
  std::ostringstream alpha;
  alpha.precision(17);
  alpha << model.lora_alpha();
  return {{"lora_rank", std::to_string(model.lora_rank())}, {"lora_alpha", alpha.str()}, {"lora_targets", targets}};
}

namespace {

// Enables the adapters described by LoraMetadata keys in `m`, if any.
void EnableLoraFromMetadata(const SafetensorsMetadata& m, const std::string& path, const std::string& kind,
                            PerformerLMImpl& model) {
  const auto rank = m.find("lora_rank");
  if (rank == m.end()) return;
  const auto alpha = m.find("lora_alpha");
  const auto targets = m.find("lora_targets");
  if (alpha == m.end() || targets == m.end()) Invalid(kind, path, "LoRA metadata needs lora_rank, lora_alpha and lora_targets");
  std::vector<std::string> names;
  std::stringstream list(targets->second);
  for (std::string t; std::getline(list, t, ',');) names.push_back(t);
  char* end = nullptr;
  const long long r = std::strtoll(rank->second.c_str(), &end, 10);
  if (rank->second.empty() || *end != '\0') Invalid(kind, path, "lora_rank '" + rank->second + "' is not an integer");
  const double a = std::strtod(alpha->second.c_str(), &end);
  if (alpha->second.empty() || *end != '\0') Invalid(kind, path, "lora_alpha '" + alpha->second + "' is not a number");
  try {
    model.EnableLora(r, a, names);
  } catch (const EngineError& e) {
    Invalid(kind, path, std::string("LoRA metadata is invalid: ") + e.what());
  }
}

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
  {
    const std::string v = get("rope_base");
    char* end = nullptr;
    c.rope_base = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0') Invalid(kind, path, "metadata 'rope_base' is not a number: '" + v + "'");
  }
  const std::string tie = get("tie_embeddings");
  if (tie != "true" && tie != "false") Invalid(kind, path, "metadata 'tie_embeddings' is '" + tie + "', not true or false");
  c.tie_embeddings = tie == "true";
  c.attention_block = integer("attention_block");
  c.redraw_interval = integer("redraw_interval");
  {
    const std::string v = get("feature_seed");
    errno = 0;
    c.feature_seed = static_cast<uint64_t>(std::strtoull(v.c_str(), nullptr, 10));
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || errno == ERANGE) {
      Invalid(kind, path, "metadata 'feature_seed' is not an unsigned 64-bit integer: '" + v + "'");
    }
  }
  auto flag = [&](const std::string& key) {
    const auto it = m.find(key);
    if (it == m.end()) return false;
    if (it->second != "true" && it->second != "false") {
      Invalid(kind, path, "metadata '" + key + "' is '" + it->second + "', not true or false");
    }
    return it->second == "true";
  };
  if (m.count("n_kv_heads")) c.n_kv_heads = integer("n_kv_heads");
  c.qkv_bias = flag("qkv_bias");
  c.attn_out_bias = flag("attn_out_bias");
  if (m.count("max_positions")) c.max_positions = integer("max_positions");
  if (const auto eps = m.find("norm_eps"); eps != m.end()) {
    char* end = nullptr;
    c.norm_eps = std::strtod(eps->second.c_str(), &end);
    if (eps->second.empty() || *end != '\0') Invalid(kind, path, "metadata 'norm_eps' is not a number: '" + eps->second + "'");
  }
  try {
    c.feature_map = ParseFeatureMap(get("feature_map"));
    if (const auto norm = m.find("norm"); norm != m.end()) c.norm = ParseNormKind(norm->second, "norm");
    if (const auto ffn = m.find("ffn"); ffn != m.end()) c.ffn = ParseFfnKind(ffn->second, "ffn");
    if (const auto pos = m.find("positions"); pos != m.end()) c.positions = ParsePositionKind(pos->second, "positions");
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

void AddTokenizer(const PerformerLMImpl& model, const std::string& prefix, SafetensorsMetadata* metadata,
                  NamedTensorMap* tensors) {
  const auto& file = model.tokenizer_file();
  if (!file) return;
  (*metadata)[kTokenizerKey] = TokenizerKindName(file->kind);
  at::Tensor bytes = at::empty({static_cast<int64_t>(file->bytes.size())}, at::kByte);
  if (!file->bytes.empty()) std::memcpy(bytes.data_ptr(), file->bytes.data(), file->bytes.size());
  (*tensors)[prefix + kTokenizerKey] = bytes;
}

void SaveModelFile(PerformerLMImpl& model, const std::string& path) {
  CheckArgument(!model.lora_enabled(), "model file: merge or drop LoRA adapters before saving");
  SafetensorsMetadata metadata = ModelConfigMetadata(model.config());
  NamedTensorMap tensors = ModelTensors(model);
  AddTokenizer(model, "", &metadata, &tensors);
  WriteSafetensors(path, metadata, tensors);
}

namespace {
// The NaN and Inf values of a tensor, counted in slices of 2^20 values: at::isfinite builds
// abs(x) and two masks as large as its input (38 MB for a GPT-2 embedding), and a load must fit
// beside the file's tensors and the model inside a Generate's reservation (docs/service.md).
int64_t NonFiniteCount(const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type())) return 0;
  constexpr int64_t kSlice = int64_t{1} << 20;
  const at::Tensor flat = t.reshape({-1});
  int64_t bad = 0;
  for (int64_t i = 0; i < flat.numel(); i += kSlice) {
    const at::Tensor finite = at::isfinite(flat.narrow(0, i, std::min(kSlice, flat.numel() - i)));
    if (!finite.all().item<bool>()) bad += finite.numel() - finite.sum().item<int64_t>();
  }
  return bad;
}
}  // namespace

PerformerLM ModelFromContents(const SafetensorsContents& file, const std::string& path,
                              const std::string& kind, const std::string& prefix) {
  const ModelConfig config = ConfigFromMetadata(file.metadata, path, kind);
  // Every tensor the config needs must be in the file with its shape before the model is
  // built: a header declaring a huge config over a few bytes of data is refused here, before
  // anything that size is allocated (the file's own tensors were bounded by its size).
  for (const auto& [name, shape] : PerformerLMImpl::TensorShapes(config)) {
    const auto t = file.tensors.find(prefix + name);
    if (t == file.tensors.end()) Invalid(kind, path, "missing tensor '" + prefix + name + "'");
    if (t->second.sizes() != at::IntArrayRef(shape)) {
      std::ostringstream msg;
      msg << "tensor '" << prefix << name << "' has shape " << t->second.sizes() << " but the config needs "
          << at::IntArrayRef(shape);
      Invalid(kind, path, msg.str());
    }
  }
  // The tokenizer: metadata names its kind, a U8 tensor holds its file; both or neither.
  std::shared_ptr<const TokenizerFile> tokenizer;
  {
    const auto stored_kind = file.metadata.find(kTokenizerKey);
    const auto bytes = file.tensors.find(prefix + kTokenizerKey);
    if (stored_kind != file.metadata.end() || bytes != file.tensors.end()) {
      if (stored_kind == file.metadata.end()) Invalid(kind, path, "has a tensor '" + prefix + kTokenizerKey + "' but no 'tokenizer' metadata naming its kind");
      if (bytes == file.tensors.end()) Invalid(kind, path, "metadata 'tokenizer' names a tokenizer but there is no tensor '" + prefix + kTokenizerKey + "'");
      if (bytes->second.scalar_type() != at::kByte || bytes->second.dim() != 1 || bytes->second.numel() == 0) {
        Invalid(kind, path, "tensor '" + prefix + kTokenizerKey + "' must be non-empty U8 bytes of one dimension");
      }
      auto t = std::make_shared<TokenizerFile>();
      try {
        t->kind = ParseTokenizerKind(stored_kind->second, "metadata 'tokenizer'");
      } catch (const EngineError& e) {
        Invalid(kind, path, e.what());
      }
      t->bytes.assign(static_cast<const char*>(bytes->second.data_ptr()), bytes->second.numel());
      tokenizer = std::move(t);
    }
  }
  PerformerLM model(config, /*init_seed=*/0);
  EnableLoraFromMetadata(file.metadata, path, kind, *model);
  model->set_tokenizer_file(tokenizer);
  const NamedTensorMap expected = ModelTensors(*model, prefix);
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind(prefix, 0) != 0) continue;  // not a model tensor (e.g. optimizer state)
    if (name == prefix + kTokenizerKey) continue;
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
    const at::Tensor& stored = file.tensors.at(name);
    if (stored.scalar_type() != dtype) Invalid(kind, path, "tensor '" + name + "' is not stored in the model's dtype");
    // NaN or Inf weights train nothing and generate garbage: refused by name on load.
    if (const int64_t bad = NonFiniteCount(stored); bad > 0) {
      Invalid(kind, path, "tensor '" + name + "' has " + std::to_string(bad) + " non-finite values (NaN or Inf)");
    }
  }
  // Only now, with every tensor read and checked, is the model touched.
  at::NoGradGuard no_grad;
  if (dtype != at::kFloat) model->to(dtype);
  for (auto& [name, t] : ModelTensors(*model, prefix)) t.copy_(file.tensors.at(name));
  return model;
}

PerformerLM LoadModelFile(const std::string& path) {
  const SafetensorsContents file = ReadSafetensors(path, kWhat);
  if (file.metadata.count("lora_rank")) {
    Invalid(kWhat, path, "holds LoRA adapters (a checkpoint?); use a model file without adapters");
  }
  return ModelFromContents(file, path, kWhat);
}

namespace {
constexpr char kAdapterWhat[] = "LoRA adapter";
constexpr char kBasePrefix[] = "base.";
constexpr char kProjection[] = "projection";
}  // namespace

void SaveLoraAdapter(PerformerLMImpl& model, const std::string& path) {
  CheckArgument(model.lora_enabled(), "LoRA adapter: the model has no adapters");
  SafetensorsMetadata metadata = LoraMetadata(model);
  metadata["format"] = "slim-lora";
  metadata["format_version"] = "1";
  for (const auto& [k, v] : ModelConfigMetadata(model.config())) metadata[kBasePrefix + k] = v;
  NamedTensorMap tensors;
  for (const auto& p : model.named_parameters()) {
    if (IsTrainedWithAdapters(p.key())) tensors[p.key()] = p.value();
  }
  // The adapters were trained with these random features (redrawn during training), so they
  // travel together: base + adapter file then computes exactly what the trained model did.
  tensors[kProjection] = model.projection();
  WriteSafetensors(path, metadata, tensors);
}

void LoadLoraAdapter(const std::string& path, PerformerLMImpl& base) {
  CheckArgument(!base.lora_enabled(), "LoRA adapter: the base model already has adapters");
  const SafetensorsContents file = ReadSafetensors(path, kAdapterWhat);
  const auto format = file.metadata.find("format");
  if (format == file.metadata.end() || format->second != "slim-lora") {
    Invalid(kAdapterWhat, path, "metadata format is not 'slim-lora' (is this a model file?)");
  }
  for (const auto& [k, v] : ModelConfigMetadata(base.config())) {
    const auto it = file.metadata.find(kBasePrefix + k);
    if (it == file.metadata.end() || it->second != v) {
      Invalid(kAdapterWhat, path, "was made for a base model with " + k + " = '" +
                                      (it == file.metadata.end() ? std::string("?") : it->second) +
                                      "', this base has '" + v + "'");
    }
  }
  // Build the adapters on a scratch copy first so that `base` stays untouched on any error.
  PerformerLM scratch(base.config(), 0);
  EnableLoraFromMetadata(file.metadata, path, kAdapterWhat, *scratch);
  std::map<std::string, at::Tensor> wanted;
  for (const auto& p : scratch->named_parameters()) {
    if (IsTrainedWithAdapters(p.key())) wanted[p.key()] = p.value();
  }
  wanted[kProjection] = scratch->projection();
  for (const auto& [name, t] : file.tensors) {
    const auto it = wanted.find(name);
    if (it == wanted.end()) Invalid(kAdapterWhat, path, "unexpected tensor '" + name + "'");
    if (t.sizes() != it->second.sizes()) Invalid(kAdapterWhat, path, "tensor '" + name + "' has the wrong shape");
  }
  for (const auto& [name, t] : wanted) {
    if (!file.tensors.count(name)) Invalid(kAdapterWhat, path, "missing tensor '" + name + "'");
  }
  base.EnableLora(scratch->lora_rank(), scratch->lora_alpha(), scratch->lora_targets());
  at::NoGradGuard no_grad;
  for (auto& p : base.named_parameters()) {
    if (wanted.count(p.key())) p.value().copy_(file.tensors.at(p.key()));
  }
  for (auto& b : base.named_buffers()) {
    if (b.key() == kProjection) b.value().copy_(file.tensors.at(kProjection));
  }
}

}  // namespace slim
