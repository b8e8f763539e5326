// Import of a Hugging Face checkpoint directory (config.json, and model.safetensors or
// model.safetensors.index.json with its shards; F32, F16 or BF16 weights) as a slim model
// (docs/model-format.md, "Hugging Face configs"). Supported model types: gpt2, llama, mistral,
// qwen2 (base/hf_config.h says what is refused and why).
#pragma once

#include <string>

#include "base/model_config.h"
#include "engine/model.h"

namespace slim {

// The checkpoint in `dir` as an fp32 slim model whose attention is `map` (softmax: the
// checkpoint's own function, exactly; a Performer feature map: its conversion, to be recovered
// by fine-tuning) with, for favor+, `n_features` features per head. Streams: shards are read
// one at a time and each tensor is copied into the model as soon as it is read, so memory
// holds the model and one tensor of the checkpoint. GPT-2's Conv1D weights (stored in × out)
// are transposed and its fused q/k/v split; causal-mask and rotary-frequency buffers are
// skipped. Throws EngineError(kInvalidArgument) naming the file and tensor for a missing,
// unexpected or misshapen tensor, and naming the key for a refused config.
PerformerLM ImportHfCheckpoint(const std::string& dir, FeatureMap map, int64_t n_features);

// The inverse: `model` (softmax attention, no LoRA adapters: merge them first) as a Hugging
// Face checkpoint in `dir` (created if needed): config.json (base/hf_config.h, HfConfigFor)
// and model.safetensors in fp32 with the tensor names and layouts transformers uses (GPT-2's
// Conv1D weights transposed and q/k/v fused), and the tokenizer file the model carries
// (tokenizer.json or tokenizer.model). Importing the result gives the same model back.
// model.safetensors is written first and config.json last, each atomically, so a directory with
// a config.json is complete. Throws EngineError(kInvalidArgument) for a model that has no
// Hugging Face type, kInternal when writing fails.
void ExportHfCheckpoint(PerformerLMImpl& model, const std::string& dir);

}  // namespace slim
