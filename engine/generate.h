// Text generation in recurrent mode: the prompt is read slice by slice, then each new token is
// one step of the carried attention state, so memory per token is constant.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/model.h"

namespace slim {

struct SamplingOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0 = greedy (argmax)
  int64_t top_k = 0;         // 0 = the whole vocabulary
  uint64_t seed = 0;         // same seed, model and prompt → same tokens
  int64_t prompt_chunk = 512;  // prompt tokens per slice
};

// Returns the new tokens (not the prompt). `on_token`, if set, sees each as it is sampled.
// Throws EngineError(kInvalidArgument) for an empty prompt, ids ≥ vocab or bad options.
std::vector<int32_t> GenerateTokens(PerformerLMImpl& model, const std::vector<int32_t>& prompt,
                                    const SamplingOptions& options,
                                    const std::function<void(int32_t)>& on_token = {});

}  // namespace slim
