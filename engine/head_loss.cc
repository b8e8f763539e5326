#include "engine/head_loss.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "base/errors.h"

namespace slim {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dtype the loss is computed in: fp32, or fp64 for fp64 activations.
at::ScalarType LossDtype(const at::Tensor& h) { return h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// One block's logits in the loss dtype, and the dtype the matmul produced them in.
struct BlockLogits {
  at::Tensor logits;
  at::ScalarType matmul_dtype;
};

// Targets with ignored rows pointing at class 0 (their rows are masked out), and the mask.
struct BlockTargets {
  at::Tensor safe, counted;
};
BlockTargets Targets(const at::Tensor& targets, int64_t ignore_index) {
  const at::Tensor counted = targets != ignore_index;
  return {at::where(counted, targets, at::zeros_like(targets)), counted};
}

class BlockedCrossEntropy : public torch::autograd::Function<BlockedCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t ignore_index, int64_t rows) {
    const at::ScalarType loss_dtype = LossDtype(h);
    at::Tensor total = at::zeros({}, h.options().dtype(loss_dtype));
    at::ScalarType matmul_dtype = h.scalar_type();
    for (int64_t start = 0; start < h.size(0); start += rows) {
      const int64_t n = std::min(rows, h.size(0) - start);
      // The matmul as the model's head would run it (autocast applies); the loss in fp32.
      const at::Tensor raw = at::linear(h.narrow(0, start, n), weight);
      matmul_dtype = raw.scalar_type();
      c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
      const at::Tensor logits = raw.to(loss_dtype);
      const BlockTargets t = Targets(targets.narrow(0, start, n), ignore_index);
      const at::Tensor picked = logits.gather(1, t.safe.unsqueeze(1)).squeeze(1);
      total += ((at::logsumexp(logits, {1}) - picked) * t.counted.to(loss_dtype)).sum();
    }
    ctx->save_for_backward({h, weight, targets});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["matmul_dtype"] = static_cast<int64_t>(matmul_dtype);
    return total;
  }

  // ∂/∂logits of the summed cross-entropy is softmax − one-hot (zero for ignored rows); each
  // block's logits are recomputed in the forward's matmul dtype, and the two matmuls of the
  // head's backward run in it too, as autograd's would.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &weight = saved[1], &targets = saved[2];
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const int64_t rows = ctx->saved_data["rows"].toInt();
    const auto dt = static_cast<at::ScalarType>(ctx->saved_data["matmul_dtype"].toInt());
    const at::ScalarType loss_dtype = LossDtype(h);
    const at::Tensor w = weight.to(dt);
    const at::Tensor g = grads[0].to(loss_dtype);
    at::Tensor grad_h = at::empty_like(h);
    // Accumulated over blocks in the loss dtype (at least fp32), cast once at the end.
    at::Tensor grad_w = at::zeros(weight.sizes(), weight.options().dtype(at::promote_types(loss_dtype, weight.scalar_type())));
    for (int64_t start = 0; start < h.size(0); start += rows) {
      const int64_t n = std::min(rows, h.size(0) - start);
      const at::Tensor hb = h.narrow(0, start, n).to(dt);
      const BlockTargets t = Targets(targets.narrow(0, start, n), ignore_index);
      at::Tensor d = at::softmax(at::linear(hb, w).to(loss_dtype), 1);
      d.scatter_add_(1, t.safe.unsqueeze(1), at::full({n, 1}, -1.0, d.options()));
      d.mul_((t.counted.to(loss_dtype) * g).unsqueeze(1));
      const at::Tensor d_mm = d.to(dt);
      grad_h.narrow(0, start, n).copy_(at::matmul(d_mm, w));
      grad_w.add_(at::matmul(d_mm.t(), hb));
    }
    return {grad_h, grad_w.to(weight.scalar_type()), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor BlockedCrossEntropySum(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& targets,
                                  int64_t ignore_index, int64_t rows_per_block) {
  CheckArgument(h.dim() == 2 && weight.dim() == 2 && h.size(1) == weight.size(1),
                "BlockedCrossEntropySum: h (N, D) and weight (V, D) do not match");
  CheckArgument(targets.dim() == 1 && targets.size(0) == h.size(0),
                "BlockedCrossEntropySum: targets must have one entry per row of h");
  CheckArgument(rows_per_block >= 1, "BlockedCrossEntropySum: rows_per_block must be >= 1");
  return BlockedCrossEntropy::apply(h, weight, targets, ignore_index, rows_per_block);
}

int64_t RowsPerLogitsBlock(int64_t vocab_size, int64_t budget_bytes) {
  return std::max<int64_t>(1, budget_bytes / (std::max<int64_t>(1, vocab_size) * 4));
}

}  // namespace slim
