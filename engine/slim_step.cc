#include "engine/slim_step.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "base/errors.h"
#include "engine/exact_sum.h"
#include "engine/head_loss.h"
#include "engine/precision.h"

namespace slim {

namespace {

std::string Shape(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// Checks shapes, dtypes and id ranges; returns the number of targets that count.
int64_t ValidateBatch(const PerformerLMImpl& model, const at::Tensor& tokens,
                      const at::Tensor& targets, int64_t chunk_size, int64_t ignore_index) {
  CheckArgument(chunk_size >= 1,
                "chunk_size: " + std::to_string(chunk_size) + " must be >= 1");
  CheckArgument(tokens.defined() && tokens.dim() == 2 && tokens.size(0) >= 1 && tokens.size(1) >= 1,
                "tokens: expected a non-empty (batch, length) tensor, got shape " +
                    (tokens.defined() ? Shape(tokens) : std::string("undefined")));
  CheckArgument(tokens.scalar_type() == at::kLong, "tokens: expected int64 ids");
  CheckArgument(targets.defined() && targets.sizes() == tokens.sizes(),
                "targets: shape " + (targets.defined() ? Shape(targets) : std::string("undefined")) +
                    " differs from tokens " + Shape(tokens));
  CheckArgument(targets.scalar_type() == at::kLong, "targets: expected int64 ids");
  const int64_t vocab = model.config().vocab_size;
  const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  CheckArgument(lo >= 0 && hi < vocab, "tokens: ids must be in [0, " + std::to_string(vocab) +
                                           "), found range [" + std::to_string(lo) + ", " +
                                           std::to_string(hi) + "]");
  const at::Tensor counted = targets != ignore_index;
  const int64_t count = counted.sum().item<int64_t>();
  CheckArgument(count > 0, "targets: every position equals ignore_index " +
                               std::to_string(ignore_index) + "; nothing to train on");
  const at::Tensor valid = targets.masked_select(counted);
  const int64_t tlo = valid.min().item<int64_t>(), thi = valid.max().item<int64_t>();
  CheckArgument(tlo >= 0 && thi < vocab, "targets: ids must be in [0, " + std::to_string(vocab) +
                                             ") or equal ignore_index, found range [" +
                                             std::to_string(tlo) + ", " + std::to_string(thi) + "]");
  return count;
}

// Σ cross-entropy over the slice's counted targets, in fp32 (fp64 for fp64 models).
at::Tensor SliceLossSum(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor l = logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
  return at::cross_entropy_loss(l.reshape({-1, l.size(-1)}), targets.reshape({-1}), {},
                                at::Reduction::Sum, ignore_index);
}

// Σ cross-entropy of the model's logits for the slice's hidden states x (B, T, D), in row blocks
// when all of its logits would take more than `block_bytes` (0: never).
at::Tensor SliceLoss(PerformerLMImpl& model, const at::Tensor& x, const at::Tensor& targets, int64_t ignore_index,
                     int64_t block_bytes) {
  const int64_t rows = x.size(0) * x.size(1);
  const int64_t per_block = RowsPerLogitsBlock(model.config().vocab_size, block_bytes);
  if (block_bytes <= 0 || rows <= per_block) return SliceLossSum(model.Logits(x), targets, ignore_index);
  return BlockedCrossEntropySum(model.FinalNorm(x).reshape({rows, x.size(2)}), model.HeadWeight(),
                                targets.reshape({rows}), ignore_index, per_block);
}

// max|a − b| / max|b| (0 when both are zero).
double RelativeToMax(const at::Tensor& a, const at::Tensor& b) {
  const double diff = (a - b).abs().max().item<double>(), scale = b.abs().max().item<double>();
  return diff == 0.0 ? 0.0 : diff / std::max(scale, 1e-300);
}

// One layer's state (s, z) in subtract mode: exact sums of the slices' contributions.
class ExactLayerState {
 public:
  explicit ExactLayerState(const AttentionState& zero) : s_(zero.s), z_(zero.z) {}
  // Adds (sign +1) or removes (−1) a slice's contribution, given as its AttentionBlockDeltas.
  void Accumulate(const at::Tensor& block_deltas, int64_t batch, int64_t heads, int sign) {
    const AttentionState d = SumBlockDeltas(block_deltas, batch, heads);
    if (sign > 0) {
      s_.Add(d.s);
      z_.Add(d.z);
    } else {
      s_.Subtract(d.s);
      z_.Subtract(d.z);
    }
  }
  AttentionState Value() const { return {s_.Value(), z_.Value()}; }

 private:
  ExactSum s_, z_;
};

// Throws EngineError(kInternal) unless the layer's exact sums are back at zero (NaN aside: a
// non-finite state already makes the loss non-finite, which the trainer reports).
void CheckClosed(const ExactLayerState& sums, int64_t layer) {
  const AttentionState v = sums.Value();
  const double residual = std::max(v.s.abs().max().item<double>(), v.z.abs().max().item<double>());
  if (std::isnan(residual) || residual == 0.0) return;
  std::ostringstream m;
  m << "subtract mode: layer " << layer << " did not recompute its slices bit for bit (the state "
    << "sums end at " << residual << " instead of 0), so rebuilt start states cannot be trusted "
    << "on this device; use memory.mode: boundaries";
  throw EngineError(ErrorCode::kInternal, m.str());
}

}  // namespace

namespace {

SlimStepResult RunSlimStep(PerformerLMImpl& model, const at::Tensor& tokens,
                           const at::Tensor& targets, const SlimStepOptions& options) {
  CheckArgument(options.loss_normalizer >= 0,
                "loss_normalizer: must be >= 0, got " + std::to_string(options.loss_normalizer));
  const int64_t counted = ValidateBatch(model, tokens, targets, options.chunk_size, options.ignore_index);
  CheckArgument(model.config().feature_map != FeatureMap::kSoftmax || options.chunk_size >= tokens.size(1),
                "chunk_size: " + std::to_string(options.chunk_size) +
                    " is below the sequence length " + std::to_string(tokens.size(1)) +
                    ", but softmax attention has no prefix-sum state to carry between slices: it trains only "
                    "with ordinary backprop (convert the model to a Performer feature map to train in slices)");
  const int64_t count = options.loss_normalizer > 0 ? options.loss_normalizer : counted;
  const int64_t B = tokens.size(0), L = tokens.size(1);
  const int64_t C = std::min(options.chunk_size, L);
  const int64_t N = (L + C - 1) / C;
  const int64_t R = model.n_layers();
  const at::ScalarType sd = model.state_dtype();
  const bool subtract = options.mode == StartStateMode::kSubtract;
  const bool audit = subtract && options.audit_start_states;
  const int64_t H = model.config().n_heads, block = model.config().attention_block;
  auto slice = [&](const at::Tensor& t, int64_t n) { return t.narrow(1, n * C, std::min(C, L - n * C)); };

  SlimStepResult result;
  result.target_count = count;
  result.slices = N;
  if (options.record_state_gradients) result.state_gradients.resize(std::max<int64_t>(N - 1, 0));

  AutocastScope autocast(tokens.device().type(), options.precision);
  const ModelState zero = model.ZeroState(B);

  // Forward sweep: states at the end of slices 0 .. N−2 (the start of the last slice).
  // Subtract mode carries each layer's state as an exact sum of the slices' contributions, so
  // that the backward sweep can remove them again bit for bit (engine/exact_sum.h): the start
  // state a slice sees is the same in both sweeps, whatever the magnitudes of the features.
  ModelState state = zero;
  std::vector<ModelState> boundaries;  // boundaries[n] = start state of slice n
  if (!subtract || audit) boundaries.resize(N);
  std::vector<ExactLayerState> sums;  // subtract mode: exact Σ over slices, per layer
  if (subtract && N > 1) {
    for (int64_t r = 0; r < R; ++r) sums.emplace_back(zero[r]);
  }
  {
    at::NoGradGuard no_grad;
    for (int64_t n = 0; n + 1 < N; ++n) {
      if (!boundaries.empty()) boundaries[n] = state;
      at::Tensor x = model.Embed(slice(tokens, n), n * C);
      for (int64_t r = 0; r < R; ++r) {
        // The last layer's output feeds only the head, which the forward sweep skips, so its
        // queries are not needed — except in subtract mode, where the keys and values must be
        // computed exactly as in the backward sweep: without queries the q/k/v projection is a
        // GEMM of another width, which a BLAS may round differently.
        const bool last = r + 1 == R;
        const LayerProjections p = model.Project(r, x, n * C, /*need_query=*/!last || subtract);
        if (subtract) {
          // The same per-block contributions (and so the same bits) as the backward sweep.
          const at::Tensor deltas = AttentionBlockDeltas(p.phi_k, p.v, sd, block);
          if (!last) {
            AttentionState unused;
            x = model.Mix(r, x, p, state[r], &unused, deltas);
          }
          sums[r].Accumulate(deltas, B, H, +1);
          state[r] = sums[r].Value();
        } else if (last) {
          const AttentionState d = AttentionStateDelta(p.phi_k, p.v, sd);
          state[r] = {state[r].s + d.s, state[r].z + d.z};
        } else {
          AttentionState end;
          x = model.Mix(r, x, p, state[r], &end);
          state[r] = std::move(end);
        }
      }
    }
    if (!boundaries.empty()) boundaries[N - 1] = state;
  }

  // Backward sweep. In subtract mode `sums` hold Σ over slices 0..n of the contributions
  // when slice n+1 has been processed; removing slice n's gives slice n's start.
  std::vector<at::Tensor> grad_s(R), grad_z(R);  // G for the end state of slice n
  // Subtract mode: removes the slice's contribution from layer r's sums and returns its
  // per-block parts, which the attention needs anyway (handing them to Mix saves recomputing
  // them there, and keeps its arithmetic that of the forward sweep).
  auto remove_slice = [&](int64_t r, const LayerProjections& p) {
    at::NoGradGuard no_grad;
    at::Tensor deltas = AttentionBlockDeltas(p.phi_k.detach(), p.v.detach(), sd, block);
    sums[r].Accumulate(deltas, B, H, -1);
    return deltas;
  };
  at::Tensor loss_total = at::zeros({}, tokens.options().dtype(at::kDouble));
  for (int64_t n = N - 1; n >= 0; --n) {
    at::Tensor x = model.Embed(slice(tokens, n), n * C);
    ModelState starts(R), ends(R);
    for (int64_t r = 0; r < R; ++r) {
      const LayerProjections p = model.Project(r, x, n * C);
      AttentionState start;
      at::Tensor deltas;  // the slice's per-block state contributions, when rebuilt here
      if (n == 0) {
        start = zero[r];  // exact zeros, never rebuilt
        if (!sums.empty()) {
          // Closing the round trip: without slice 0's contribution the sums must be exactly
          // zero. They are iff every slice was recomputed bit for bit as in the forward sweep,
          // which exact subtraction relies on (a BLAS or device that rounds the same product
          // differently from one call to the next would break it).
          deltas = remove_slice(r, p);
          CheckClosed(sums[r], r);
        }
      } else if (n + 1 == N) {
        start = state[r];
      } else if (!subtract) {
        start = boundaries[n][r];
      } else {
        at::NoGradGuard no_grad;
        deltas = remove_slice(r, p);
        start = sums[r].Value();
        if (audit) {
          const AttentionState& stored = boundaries[n][r];
          result.max_start_state_drift =
              std::max({result.max_start_state_drift, RelativeToMax(start.s, stored.s),
                        RelativeToMax(start.z, stored.z)});
          ++result.audited_states;
        }
      }
      if (n > 0) start = {start.s.detach().requires_grad_(true), start.z.detach().requires_grad_(true)};
      starts[r] = start;
      x = model.Mix(r, x, p, start, &ends[r], deltas);
    }
    const at::Tensor loss_n =
        SliceLoss(model, x, slice(targets, n), options.ignore_index, options.logits_block_bytes) /
        static_cast<double>(count);
    std::vector<at::Tensor> outputs{loss_n}, grads{at::ones_like(loss_n)};
    if (n + 1 < N) {
      for (int64_t r = 0; r < R; ++r) {
        outputs.push_back(ends[r].s);
        grads.push_back(grad_s[r]);
        outputs.push_back(ends[r].z);
        grads.push_back(grad_z[r]);
      }
    }
    torch::autograd::backward(outputs, grads);
    loss_total += loss_n.detach().to(at::kDouble);
    if (n == 0) break;
    for (int64_t r = 0; r < R; ++r) {
      const at::Tensor gs = starts[r].s.grad(), gz = starts[r].z.grad();
      grad_s[r] = gs.defined() ? gs : at::zeros_like(starts[r].s);
      grad_z[r] = gz.defined() ? gz : at::zeros_like(starts[r].z);
    }
    if (options.record_state_gradients) {
      ModelState g(R);
      for (int64_t r = 0; r < R; ++r) g[r] = {grad_s[r].clone(), grad_z[r].clone()};
      result.state_gradients[n - 1] = std::move(g);
    }
  }
  result.loss = loss_total.item<double>();
  return result;
}

}  // namespace

SlimStepResult SlimTrainingStep(PerformerLMImpl& model, const at::Tensor& tokens,
                                const at::Tensor& targets, const SlimStepOptions& options) {
  try {
    return RunSlimStep(model, tokens, targets, options);
  } catch (const c10::OutOfMemoryError& e) {
    // A memory cap (or the device) refused an allocation. Everything the step allocated is
    // released by unwinding; gradients may hold a partial sum, so callers zero them.
    throw EngineError(ErrorCode::kResourceExhausted,
                      std::string("out of memory during a training step with chunk_size ") +
                          std::to_string(options.chunk_size) + ": " + e.what_without_backtrace());
  }
}

double SlicedLoss(PerformerLMImpl& model, const at::Tensor& tokens, const at::Tensor& targets,
                  int64_t chunk_size, Precision precision, int64_t ignore_index, int64_t logits_block_bytes) {
  const int64_t count = ValidateBatch(model, tokens, targets, chunk_size, ignore_index);
  const int64_t L = tokens.size(1), C = std::min(chunk_size, L);
  at::NoGradGuard no_grad;
  AutocastScope autocast(tokens.device().type(), precision);
  ModelState state = model.ZeroState(tokens.size(0));
  at::Tensor total = at::zeros({}, tokens.options().dtype(at::kDouble));
  for (int64_t start = 0; start < L; start += C) {
    const int64_t len = std::min(C, L - start);
    const at::Tensor hidden = model.HiddenSlice(tokens.narrow(1, start, len), start, &state);
    total += SliceLoss(model, hidden, targets.narrow(1, start, len), ignore_index, logits_block_bytes).to(at::kDouble);
  }
  return total.item<double>() / static_cast<double>(count);
}

}  // namespace slim
