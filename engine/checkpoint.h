// Training checkpoints: the model (config, weights, favor+ projection), the optimizer's state
// and the caller's progress record (step, data position, ...) in one checksummed safetensors
// file, written atomically, so a killed job resumes exactly where its last checkpoint left it.
#pragma once

#include <torch/optim/optimizer.h>

#include <string>

#include "engine/model.h"
#include "engine/safetensors.h"

namespace slim {

// `progress`: string key/values the trainer needs to resume (keys must not start with
// "model." or "optimizer"; the config keys are added by the checkpoint). A model with LoRA
// adapters is saved whole (frozen base and adapters) and read back with its adapters enabled. Throws EngineError(kInternal) if the file cannot be written; the previous
// checkpoint at `path`, if any, stays intact.
void SaveCheckpoint(const std::string& path, PerformerLMImpl& model, torch::optim::Optimizer& optimizer,
                    const SafetensorsMetadata& progress);

struct Checkpoint {
  PerformerLM model{nullptr};
  SafetensorsMetadata progress;  // what SaveCheckpoint was given
  std::string optimizer_state;   // LibTorch's serialized optimizer archive
};

// Reads and verifies a checkpoint (checksum, names, shapes). Throws EngineError(kInvalidArgument)
// "checkpoint <path>: ..." for anything truncated, corrupted or inconsistent.
Checkpoint ReadCheckpoint(const std::string& path);

// Loads the saved optimizer state into `optimizer`, which must have been built over the
// checkpoint's model parameters in the same order as when it was saved.
void RestoreOptimizer(const Checkpoint& checkpoint, torch::optim::Optimizer& optimizer,
                      const c10::Device& device);

}  // namespace slim
