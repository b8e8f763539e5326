#include "engine/model_file.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "engine/errors.h"
#include "engine/json.h"

namespace slim {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // the safetensors limit

[[noreturn]] void Invalid(const std::string& path, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, "model file " + path + ": " + what);
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// ---- config ↔ metadata ----

std::map<std::string, std::string> ConfigMetadata(const ModelConfig& c) {
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

ModelConfig ConfigFromMetadata(const std::map<std::string, Json>& m, const std::string& path) {
  auto get = [&](const std::string& key) -> std::string {
    const auto it = m.find(key);
    if (it == m.end() || it->second.kind != Json::kString) Invalid(path, "metadata has no string '" + key + "'");
    return it->second.text;
  };
  auto integer = [&](const std::string& key) -> int64_t {
    const std::string v = get(key);
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0') Invalid(path, "metadata '" + key + "' is not an integer: '" + v + "'");
    return n;
  };
  if (get("format") != "slim") Invalid(path, "metadata format is '" + get("format") + "', not 'slim'");
  if (get("format_version") != "1") Invalid(path, "unsupported format_version '" + get("format_version") + "'");
  ModelConfig c;
  c.vocab_size = integer("vocab_size");
  c.d_model = integer("d_model");
  c.n_layers = integer("n_layers");
  c.n_heads = integer("n_heads");
  c.d_ff = integer("d_ff");
  c.feature_map = ParseFeatureMap(get("feature_map"));
  c.n_features = integer("n_features");
  c.rope_base = std::strtod(get("rope_base").c_str(), nullptr);
  c.tie_embeddings = get("tie_embeddings") == "true";
  c.attention_block = integer("attention_block");
  c.redraw_interval = integer("redraw_interval");
  c.feature_seed = static_cast<uint64_t>(std::strtoull(get("feature_seed").c_str(), nullptr, 10));
  try {
    c.Validate();
  } catch (const EngineError& e) {
    Invalid(path, std::string("config in metadata is invalid: ") + e.what());
  }
  return c;
}

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kBFloat16: return "BF16";
    default: return nullptr;
  }
}

std::map<std::string, at::Tensor> NamedTensors(PerformerLMImpl& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : model.named_parameters()) out[p.key()] = p.value();
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value();
  return out;
}

}  // namespace

void SaveModelFile(PerformerLMImpl& model, const std::string& path) {
  CheckArgument(!model.lora_enabled(), "model file: merge or drop LoRA adapters before saving");
  const std::map<std::string, at::Tensor> tensors = NamedTensors(model);
  std::ostringstream header;
  header << "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : ConfigMetadata(model.config())) {
    header << (first ? "" : ",") << Quote(k) << ":" << Quote(v);
    first = false;
  }
  header << "}";
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const char* dtype = DtypeName(c.scalar_type());
    if (dtype == nullptr) throw EngineError(ErrorCode::kInternal, "model file: unsupported dtype for " + name);
    const uint64_t bytes = c.numel() * c.element_size();
    header << "," << Quote(name) << ":{\"dtype\":\"" << dtype << "\",\"shape\":[";
    for (int64_t i = 0; i < c.dim(); ++i) header << (i ? "," : "") << c.size(i);
    header << "],\"data_offsets\":[" << offset << "," << offset + bytes << "]}";
    offset += bytes;
    data.push_back(c);
  }
  header << "}";
  std::string h = header.str();
  while (h.size() % 8 != 0) h += ' ';  // data starts 8-byte aligned

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw EngineError(ErrorCode::kInternal, "model file " + path + ": cannot create " + tmp + ": " + std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      c += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  uint64_t n = h.size();
  unsigned char size_le[8];
  for (int i = 0; i < 8; ++i) size_le[i] = static_cast<unsigned char>(n >> (8 * i));
  bool ok = write_all(size_le, 8) && write_all(h.data(), h.size());
  for (const at::Tensor& t : data) ok = ok && write_all(t.data_ptr(), t.numel() * t.element_size());
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    throw EngineError(ErrorCode::kInternal, "model file " + path + ": write failed: " + reason);
  }
}

PerformerLM LoadModelFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Invalid(path, "cannot open");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) Invalid(path, "truncated: " + std::to_string(file_size) + " bytes, no header size");
  unsigned char size_le[8];
  in.read(reinterpret_cast<char*>(size_le), 8);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(size_le[i]) << (8 * i);
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    Invalid(path, "header size " + std::to_string(header_size) + " exceeds the file (" + std::to_string(file_size) + " bytes)");
  }
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  Json root;
  try {
    root = ParseJson(header);
  } catch (const std::exception& e) {
    Invalid(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (root.kind != Json::kObject) Invalid(path, "header is not a JSON object");
  const auto meta = root.members.find("__metadata__");
  if (meta == root.members.end() || meta->second.kind != Json::kObject) Invalid(path, "header has no __metadata__");
  const ModelConfig config = ConfigFromMetadata(meta->second.members, path);
  const uint64_t data_start = 8 + header_size, data_size = file_size - data_start;

  PerformerLM model(config, /*init_seed=*/0);
  std::map<std::string, at::Tensor> expected = NamedTensors(*model);
  std::map<std::string, at::Tensor> loaded;
  for (const auto& [name, entry] : root.members) {
    if (name == "__metadata__") continue;
    const auto want = expected.find(name);
    if (want == expected.end()) Invalid(path, "unexpected tensor '" + name + "' for this config");
    const auto dtype = entry.members.find("dtype");
    const auto shape = entry.members.find("shape");
    const auto offsets = entry.members.find("data_offsets");
    if (entry.kind != Json::kObject || dtype == entry.members.end() || shape == entry.members.end() ||
        offsets == entry.members.end() || offsets->second.items.size() != 2) {
      Invalid(path, "tensor '" + name + "' lacks dtype, shape or data_offsets");
    }
    at::ScalarType type;
    if (dtype->second.text == "F32") type = at::kFloat;
    else if (dtype->second.text == "F64") type = at::kDouble;
    else if (dtype->second.text == "BF16") type = at::kBFloat16;
    else Invalid(path, "tensor '" + name + "' has unsupported dtype '" + dtype->second.text + "'");
    std::vector<int64_t> dims;
    for (const Json& d : shape->second.items) dims.push_back(static_cast<int64_t>(d.number));
    if (at::IntArrayRef(dims) != want->second.sizes()) {
      std::ostringstream msg;
      msg << "tensor '" << name << "' has shape " << at::IntArrayRef(dims) << " but the config needs "
          << want->second.sizes();
      Invalid(path, msg.str());
    }
    const uint64_t begin = static_cast<uint64_t>(offsets->second.items[0].number);
    const uint64_t end = static_cast<uint64_t>(offsets->second.items[1].number);
    const uint64_t bytes = static_cast<uint64_t>(want->second.numel()) * c10::elementSize(type);
    if (end < begin || end - begin != bytes) Invalid(path, "tensor '" + name + "' has data_offsets that do not match its shape");
    if (end > data_size) Invalid(path, "truncated: tensor '" + name + "' ends at byte " + std::to_string(data_start + end) +
                                           " of " + std::to_string(file_size));
    at::Tensor t = at::empty(dims, at::TensorOptions().dtype(type));
    in.seekg(static_cast<std::streamoff>(data_start + begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes));
    if (!in) Invalid(path, "read error in tensor '" + name + "'");
    loaded[name] = t;
  }
  for (const auto& [name, t] : expected) {
    if (!loaded.count(name)) Invalid(path, "missing tensor '" + name + "'");
  }
  // Only now, with every tensor read and checked, is the model touched.
  at::NoGradGuard no_grad;
  const at::ScalarType dtype = loaded.at("embed.weight").scalar_type();
  if (dtype != at::kFloat) model->to(dtype);
  for (auto& [name, t] : NamedTensors(*model)) t.copy_(loaded.at(name));
  return model;
}

}  // namespace slim
