#include "engine/generate.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <limits>
#include <string>

#include "base/errors.h"

namespace slim {

std::vector<int32_t> GenerateTokens(PerformerLMImpl& model, const std::vector<int32_t>& prompt,
                                    const SamplingOptions& o, const std::function<void(int32_t)>& on_token) {
  const int64_t vocab = model.config().vocab_size;
  CheckArgument(!prompt.empty(), "prompt: must not be empty");
  CheckArgument(o.max_new_tokens >= 0, "max_new_tokens: must be >= 0");
  CheckArgument(o.temperature >= 0, "temperature: must be >= 0");
  CheckArgument(o.top_k >= 0, "top_k: must be >= 0");
  CheckArgument(o.prompt_chunk >= 1, "prompt_chunk: must be >= 1");
  for (int32_t id : prompt) {
    CheckArgument(id >= 0 && id < vocab, "prompt: id " + std::to_string(id) + " is outside [0, " + std::to_string(vocab) + ")");
  }
  at::NoGradGuard no_grad;
  const c10::Device device = model.projection().device();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  ModelState state = model.ZeroState(1);
  const at::Tensor ids = at::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), at::kLong).view({1, -1}).to(device);
  const int64_t P = ids.size(1);
  at::Tensor logits;
  for (int64_t start = 0; start < P; start += o.prompt_chunk) {
    const int64_t len = std::min(o.prompt_chunk, P - start);
    logits = model.ForwardSlice(ids.narrow(1, start, len), start, &state).select(1, len - 1);
  }
  std::vector<int32_t> out;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    at::Tensor scores = logits[0].to(at::kCPU, at::kDouble);
    int64_t next;
    if (o.temperature == 0) {
      next = scores.argmax().item<int64_t>();
    } else {
      scores = scores / o.temperature;
      if (o.top_k > 0 && o.top_k < vocab) {
        const at::Tensor kth = std::get<0>(scores.topk(o.top_k)).min();
        scores = scores.masked_fill(scores < kth, -std::numeric_limits<double>::infinity());
      }
      next = at::multinomial(at::softmax(scores, 0), 1, /*replacement=*/false, gen).item<int64_t>();
    }
    out.push_back(static_cast<int32_t>(next));
    if (on_token) on_token(static_cast<int32_t>(next));
    const at::Tensor token = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong).device(device));
    logits = model.ForwardSlice(token, P + i, &state).select(1, 0);
  }
  return out;
}

}  // namespace slim
