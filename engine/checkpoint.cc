#include "engine/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstring>
#include <sstream>

#include "base/errors.h"
#include "engine/model_file.h"

namespace slim {
namespace {

constexpr char kWhat[] = "checkpoint";
constexpr char kModelPrefix[] = "model.";
constexpr char kOptimizerTensor[] = "optimizer";
constexpr char kProgressPrefix[] = "progress.";

}  // namespace

void SaveCheckpoint(const std::string& path, PerformerLMImpl& model, torch::optim::Optimizer& optimizer,
                    const SafetensorsMetadata& progress) {
  SafetensorsMetadata metadata = ModelConfigMetadata(model.config());
  for (const auto& [k, v] : LoraMetadata(model)) metadata[k] = v;
  for (const auto& [k, v] : progress) metadata[kProgressPrefix + k] = v;
  NamedTensorMap tensors = ModelTensors(model, kModelPrefix);
  AddTokenizer(model, kModelPrefix, &metadata, &tensors);
  // The optimizer state (AdamW moments, step counts) in LibTorch's own archive format, kept as
  // bytes: its layout is LibTorch's business, and it round-trips exactly.
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  const std::string blob = bytes.str();
  at::Tensor state = at::empty({static_cast<int64_t>(blob.size())}, at::kByte);
  std::memcpy(state.data_ptr(), blob.data(), blob.size());
  tensors[kOptimizerTensor] = state;
  WriteSafetensors(path, metadata, tensors);
}

Checkpoint ReadCheckpoint(const std::string& path) {
  const SafetensorsContents file = ReadSafetensors(path, kWhat);
  Checkpoint c;
  c.model = ModelFromContents(file, path, kWhat, kModelPrefix);
  for (const auto& [k, v] : file.metadata) {
    if (k.rfind(kProgressPrefix, 0) == 0) c.progress[k.substr(std::strlen(kProgressPrefix))] = v;
  }
  const auto state = file.tensors.find(kOptimizerTensor);
  if (state == file.tensors.end() || state->second.scalar_type() != at::kByte || state->second.dim() != 1) {
    throw EngineError(ErrorCode::kInvalidArgument, std::string(kWhat) + " " + path + ": no optimizer state");
  }
  c.optimizer_state.assign(static_cast<const char*>(state->second.data_ptr()), state->second.numel());
  for (const auto& [name, t] : file.tensors) {
    if (name != kOptimizerTensor && name.rfind(kModelPrefix, 0) != 0) {
      throw EngineError(ErrorCode::kInvalidArgument, std::string(kWhat) + " " + path + ": unexpected tensor '" + name + "'");
    }
  }
  return c;
}

void RestoreOptimizer(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer,
                      const c10::Device& device) {
  torch::serialize::InputArchive archive;
  std::istringstream in(checkpoint.optimizer_state);
  try {
    // Onto the model's device, not the one the moments were saved from: a retry may resume
    // on another GPU, or on the CPU.
    archive.load_from(in, device);
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      std::string("checkpoint: optimizer state does not fit this optimizer: ") + e.what_without_backtrace());
  }
}

}  // namespace slim
