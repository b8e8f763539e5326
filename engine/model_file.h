// Model files: safetensors (https://github.com/huggingface/safetensors) holding every parameter
// and the favor+ projection, with the model config in the header's __metadata__ so a file is
// self-describing. Layout and tensor names: docs/model-format.md.
#pragma once

#include <string>

#include "engine/model.h"
#include "engine/safetensors.h"

namespace slim {

// Writes atomically: a temporary file in the same directory, fsync, rename. Tensors are stored
// in the model's dtype (F32, F64 or BF16), contiguous, little-endian.
// Throws EngineError(kInternal) if the file cannot be written (nothing is left behind).
void SaveModelFile(PerformerLMImpl& model, const std::string& path);

// Reads a file written by SaveModelFile (or any safetensors file with the same names, shapes
// and metadata). Throws EngineError(kInvalidArgument) naming what is wrong — unreadable file,
// truncated data, malformed header, missing or unexpected tensor, shape or dtype that does not
// match the config — and never returns a partly loaded model.
PerformerLM LoadModelFile(const std::string& path);

// LoRA adapters on their own: metadata format "slim-lora" with lora_rank, lora_alpha,
// lora_targets (comma-separated) and the base model's config prefixed "base."; tensors
// "layers.<i>.<proj>.lora_a/lora_b" and the favor+ "projection" the adapters were trained with
// (loading it replaces the base's). Written atomically. Requires model.lora_enabled().
void SaveLoraAdapter(PerformerLMImpl& model, const std::string& path);
// Adds the adapters stored in `path` to `base` (which has none yet). Throws
// EngineError(kInvalidArgument) naming the problem if the file is damaged or was made for a base
// with a different config; `base` is untouched then.
void LoadLoraAdapter(const std::string& path, PerformerLMImpl& base);

// Building blocks shared with checkpoints. The config as metadata strings; every parameter and
// buffer by name, prefixed; and a model rebuilt from contents holding exactly those names
// (errors name `path` and the offending tensor, as LoadModelFile's).
SafetensorsMetadata ModelConfigMetadata(const ModelConfig& config);
// lora_rank, lora_alpha, lora_targets of a model with adapters (empty without).
// ModelFromContents enables adapters when the metadata has them.
SafetensorsMetadata LoraMetadata(const PerformerLMImpl& model);
NamedTensorMap ModelTensors(PerformerLMImpl& model, const std::string& prefix = "");
// The model's tokenizer, if it has one: metadata "tokenizer" (its kind) and the U8 tensor
// prefix + "tokenizer" (its file's bytes). ModelFromContents reads them back.
void AddTokenizer(const PerformerLMImpl& model, const std::string& prefix, SafetensorsMetadata* metadata,
                  NamedTensorMap* tensors);
PerformerLM ModelFromContents(const SafetensorsContents& contents, const std::string& path,
                              const std::string& what, const std::string& prefix = "");

}  // namespace slim
