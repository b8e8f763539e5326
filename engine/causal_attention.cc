#include "engine/causal_attention.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

namespace slim {

// Implementation notes (performance). The attention is one custom autograd function with a
// hand-written backward instead of a chain of differentiable ops, because autograd of the
// op-by-op form saved and re-read many (B,H,T,·) intermediates (scores, masked scores, num,
// den, cat/cumsum buffers, their flips in the backward) and ran ~20 batched matmuls.
//
// The denominator rides along with the numerator: v is augmented with a column of ones and the
// state is kept as S' = [s | z] (M × (d+1)), so φqᵀS' gives [num | den] in one matmul, the
// intra-block product A·[v | 1] gives both intra-block sums, and the backward treats the
// denominator gradient as just one more column. Per block of b tokens (A = tril(Q Kᵀ)):
//   forward   S'_j = S'_start + Σ_{i<j} K_iᵀV'_i,   [num | den]_j = Q_j S'_j + A_j V'_j
//   backward  G' = [dout/den | −(dout·out)/den],  R_i = dS'_end + Σ_{j>i} Q_jᵀG'_j
//             dQ = tril(G'V'ᵀ) K + G'S'ᵀ,  dK = tril(G'V'ᵀ)ᵀ Q + V' Rᵀ,  dV' = AᵀG' + K R,
//             dS'_start = R_0 + Q_0ᵀG'_0.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- BLAS ----
//
// On CPU the block loops below call the BLAS that LibTorch itself links (found by symbol, so
// nothing extra is linked) once per block, instead of batched LibTorch matmuls: at::bmm on CPU
// dispatches select/resolve_conj/addmm for every batch item, which for these (64 × 128)·(128 ×
// 65) products cost about as much as the arithmetic, and a batched op streams all blocks of a
// long sequence through the cache once per product. Per block, all products run back to back
// on cache-resident data. Without such a BLAS (another build, a GPU, another dtype) the same
// math runs as batched LibTorch ops. (sgemm_/dgemm_ are the standard Fortran BLAS entry
// points with 32-bit integers, which is what LibTorch's own BLAS calls use.)

template <typename scalar_t>
using GemmFn = void (*)(const char*, const char*, const int*, const int*, const int*,
                        const scalar_t*, const scalar_t*, const int*, const scalar_t*, const int*,
                        const scalar_t*, scalar_t*, const int*);

template <typename scalar_t>
GemmFn<scalar_t> BlasGemm();
template <>
GemmFn<float> BlasGemm<float>() {
  static const auto fn = reinterpret_cast<GemmFn<float>>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return fn;
}
template <>
GemmFn<double> BlasGemm<double>() {
  static const auto fn = reinterpret_cast<GemmFn<double>>(dlsym(RTLD_DEFAULT, "dgemm_"));
  return fn;
}

std::atomic<bool> force_torch_path{false};

bool UseBlasLoops(const at::Tensor& t) {
  if (!t.device().is_cpu() || force_torch_path.load(std::memory_order_relaxed)) return false;
  if (t.scalar_type() == at::kFloat) return BlasGemm<float>() != nullptr;
  if (t.scalar_type() == at::kDouble) return BlasGemm<double>() != nullptr;
  return false;
}

// C (m × n) = op(A)·op(B), or C += op(A)·op(B), for row-major matrices with row strides
// lda/ldb/ldc; op(X) = Xᵀ when the flag is set (A is stored k × m then, B n × k).
template <typename scalar_t>
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, const scalar_t* a, int lda,
          const scalar_t* b, int ldb, bool accumulate, scalar_t* c, int ldc) {
  // A row-major matrix read as column-major is its transpose, so row-major C = op(A)·op(B)
  // is the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ with the same transpose flags.
  const char tb = trans_b ? 'T' : 'N', ta = trans_a ? 'T' : 'N';
  const scalar_t one = 1, beta = accumulate ? 1 : 0;
  BlasGemm<scalar_t>()(&tb, &ta, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

// Zeroes the entries above the diagonal of a row-major n × n matrix: the causal mask within a
// block (exact zeros, so later tokens never touch earlier outputs).
template <typename scalar_t>
void ZeroAboveDiagonal(scalar_t* a, int64_t n) {
  for (int64_t r = 0; r + 1 < n; ++r) std::fill(a + r * n + r + 1, a + (r + 1) * n, scalar_t(0));
}

at::Tensor Tr(const at::Tensor& x) { return x.transpose(-1, -2); }

// A contiguous (BH, nb, r, c) block tensor as the (BH·nb, r, c) batch that bmm takes (a view).
at::Tensor Batches(const at::Tensor& x) { return x.view({-1, x.size(-2), x.size(-1)}); }

// Shapes of one call, after padding T up to a whole number of blocks.
struct Blocking {
  int64_t B, H, T, M, D, b, nb, padded;
  int64_t BH() const { return B * H; }
};

Blocking MakeBlocking(const at::Tensor& phi_k, const at::Tensor& v, int64_t block) {
  Blocking g;
  g.B = phi_k.size(0);
  g.H = phi_k.size(1);
  g.T = phi_k.size(2);
  g.M = phi_k.size(3);
  g.D = v.size(3);
  g.b = std::max<int64_t>(1, std::min(block, g.T));
  g.nb = (g.T + g.b - 1) / g.b;
  g.padded = g.nb * g.b;
  return g;
}

// x (B,H,T,·) → contiguous blocks (B·H, nb, b, ·) in dtype; zero rows pad T to nb·b. Zero keys
// add nothing to the state and zero queries give discarded outputs.
at::Tensor ToBlocks(const at::Tensor& x, const Blocking& g, at::ScalarType dtype) {
  at::Tensor t = x.to(dtype);
  if (g.padded != g.T) t = at::constant_pad_nd(t, {0, 0, 0, g.padded - g.T});
  return t.contiguous().view({g.BH(), g.nb, g.b, x.size(3)});
}

// [v | 1] as blocks (B·H, nb, b, D+1); padded rows are all zero.
at::Tensor AugmentedValues(const at::Tensor& v, const Blocking& g, at::ScalarType dtype) {
  const auto options = v.options().dtype(dtype);
  const std::vector<int64_t> shape{g.B, g.H, g.padded, g.D + 1};
  at::Tensor va = g.padded == g.T ? at::empty(shape, options) : at::zeros(shape, options);
  va.narrow(2, 0, g.T).narrow(3, 0, g.D).copy_(v);
  va.narrow(2, 0, g.T).select(3, g.D).fill_(1);
  return va.view({g.BH(), g.nb, g.b, g.D + 1});
}

// ---- Forward over the blocks ----
// In: qb, kb (BH, nb, b, M), vab (BH, nb, b, D1), states[:, 0] = S'_start, optional deltas
// (BH, nb, M, D1) = K_jᵀV'_j. Out: states[:, j] = S' before block j, states[:, nb] = S'_end,
// scores = tril(Q_j K_jᵀ) (BH, nb, b, b), numden = Q_j S'_j + A_j V'_j (BH, nb, b, D1).

template <typename scalar_t>
void ForwardBlocksBlas(const at::Tensor& qb, const at::Tensor& kb, const at::Tensor& vab,
                       const at::Tensor& deltas, const at::Tensor& states,
                       const at::Tensor& scores, const at::Tensor& numden) {
  const int BH = static_cast<int>(qb.size(0)), nb = static_cast<int>(qb.size(1));
  const int b = static_cast<int>(qb.size(2)), M = static_cast<int>(qb.size(3));
  const int D1 = static_cast<int>(vab.size(3));
  const int64_t sq = int64_t{b} * M, sv = int64_t{b} * D1, ss = int64_t{M} * D1,
                sa = int64_t{b} * b;
  const scalar_t *q = qb.data_ptr<scalar_t>(), *k = kb.data_ptr<scalar_t>(),
                 *va = vab.data_ptr<scalar_t>();
  const scalar_t* dl = deltas.defined() ? deltas.data_ptr<scalar_t>() : nullptr;
  scalar_t *st = states.data_ptr<scalar_t>(), *sc = scores.data_ptr<scalar_t>(),
           *nd = numden.data_ptr<scalar_t>();
  for (int64_t h = 0; h < BH; ++h) {
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t blk = h * nb + j;
      const scalar_t *Q = q + blk * sq, *K = k + blk * sq, *V = va + blk * sv;
      const scalar_t* S = st + (h * (nb + 1) + j) * ss;
      scalar_t* S_next = st + (h * (nb + 1) + j + 1) * ss;
      scalar_t *A = sc + blk * sa, *ND = nd + blk * sv;
      // S'_{j+1} = S'_j + K_jᵀV'_j
      std::copy(S, S + ss, S_next);
      if (dl != nullptr) {
        const scalar_t* Dj = dl + blk * ss;
        for (int64_t i = 0; i < ss; ++i) S_next[i] += Dj[i];
      } else {
        Gemm<scalar_t>(true, false, M, D1, b, K, M, V, D1, true, S_next, D1);
      }
      Gemm<scalar_t>(false, true, b, b, M, Q, M, K, M, false, A, b);  // A = tril(Q Kᵀ)
      ZeroAboveDiagonal(A, b);
      Gemm<scalar_t>(false, false, b, D1, M, Q, M, S, D1, false, ND, D1);  // Q S'_j
      Gemm<scalar_t>(false, false, b, D1, b, A, b, V, D1, true, ND, D1);   // + A V'_j
    }
  }
}

void ForwardBlocksTorch(const at::Tensor& qb, const at::Tensor& kb, const at::Tensor& vab,
                        const at::Tensor& deltas, const at::Tensor& states,
                        const at::Tensor& scores, const at::Tensor& numden) {
  // The path CUDA takes: a fixed number of kernels whatever the number of blocks, products
  // written into their outputs (bmm_out, baddbmm_) rather than computed and copied.
  const int64_t nb = qb.size(1);
  states.narrow(1, 1, nb).copy_(deltas.defined() ? deltas : at::matmul(Tr(kb), vab));
  states.cumsum_(1);
  at::Tensor scores3 = Batches(scores), numden3 = Batches(numden);
  at::bmm_out(scores3, Batches(qb), Tr(Batches(kb))).tril_();
  at::Tensor numden4 = numden;  // a handle: out= arguments are non-const
  at::matmul_out(numden4, qb, states.narrow(1, 0, nb));
  numden3.baddbmm_(scores3, Batches(vab));
}

// ---- Backward over the blocks ----
// In: the forward's blocks, gp = G' (BH, nb, b, D1), dstart = dS'_end (BH, M, D1).
// Out: dq, dk (BH, nb, b, M), dv (BH, nb, b, D), dstart = dS'_start. Walking the blocks from
// the last, R = dS'_end + Σ_{i>j} Q_iᵀG'_i is carried in dstart and is dS'_start at the end.

template <typename scalar_t>
void BackwardBlocksBlas(const at::Tensor& qb, const at::Tensor& kb, const at::Tensor& vab,
                        const at::Tensor& states, const at::Tensor& scores, const at::Tensor& gp,
                        const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                        const at::Tensor& dstart) {
  const int BH = static_cast<int>(qb.size(0)), nb = static_cast<int>(qb.size(1));
  const int b = static_cast<int>(qb.size(2)), M = static_cast<int>(qb.size(3));
  const int D1 = static_cast<int>(vab.size(3)), D = D1 - 1;
  const int64_t sq = int64_t{b} * M, sv = int64_t{b} * D1, ss = int64_t{M} * D1,
                sa = int64_t{b} * b, sd = int64_t{b} * D;
  const scalar_t *q = qb.data_ptr<scalar_t>(), *k = kb.data_ptr<scalar_t>(),
                 *va = vab.data_ptr<scalar_t>(), *st = states.data_ptr<scalar_t>(),
                 *sc = scores.data_ptr<scalar_t>(), *g = gp.data_ptr<scalar_t>();
  scalar_t *pdq = dq.data_ptr<scalar_t>(), *pdk = dk.data_ptr<scalar_t>(),
           *pdv = dv.data_ptr<scalar_t>();
  std::vector<scalar_t> dscores(static_cast<size_t>(sa));
  scalar_t* dA = dscores.data();
  for (int64_t h = 0; h < BH; ++h) {
    scalar_t* R = dstart.data_ptr<scalar_t>() + h * ss;
    for (int64_t j = nb - 1; j >= 0; --j) {
      const int64_t blk = h * nb + j;
      const scalar_t *Q = q + blk * sq, *K = k + blk * sq, *V = va + blk * sv,
                     *A = sc + blk * sa, *G = g + blk * sv;
      const scalar_t* S = st + (h * (nb + 1) + j) * ss;
      scalar_t *dQ = pdq + blk * sq, *dK = pdk + blk * sq, *dV = pdv + blk * sd;
      Gemm<scalar_t>(false, true, b, b, D1, G, D1, V, D1, false, dA, b);  // dA = tril(G'V'ᵀ)
      ZeroAboveDiagonal(dA, b);
      Gemm<scalar_t>(false, true, b, M, D1, G, D1, S, D1, false, dQ, M);  // dQ = G'S'ᵀ
      Gemm<scalar_t>(false, false, b, M, b, dA, b, K, M, true, dQ, M);    //    + dA K
      Gemm<scalar_t>(true, false, b, M, b, dA, b, Q, M, false, dK, M);    // dK = dAᵀQ
      Gemm<scalar_t>(false, true, b, M, D1, V, D1, R, D1, true, dK, M);   //    + V'Rᵀ
      Gemm<scalar_t>(true, false, b, D, b, A, b, G, D1, false, dV, D);    // dV = AᵀG'
      Gemm<scalar_t>(false, false, b, D, M, K, M, R, D1, true, dV, D);    //    + K R
      Gemm<scalar_t>(true, false, M, D1, b, Q, M, G, D1, true, R, D1);    // R += QᵀG'
    }
  }
}

void BackwardBlocksTorch(const at::Tensor& qb, const at::Tensor& kb, const at::Tensor& vab,
                         const at::Tensor& states, const at::Tensor& scores, const at::Tensor& gp,
                         const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                         const at::Tensor& dstart) {
  const int64_t nb = qb.size(1), D = dv.size(3);
  // rest[:, j] = R_j: Q_{j+1}ᵀG'_{j+1} (the last slot dS'_end), summed from the back by
  // flip-cumsum-flip: three kernels instead of one add per block.
  at::Tensor terms = at::empty_like(states.narrow(1, 0, nb));
  terms.select(1, nb - 1).copy_(dstart);
  if (nb > 1) {
    terms.narrow(1, 0, nb - 1).copy_(at::matmul(Tr(qb.narrow(1, 1, nb - 1)), gp.narrow(1, 1, nb - 1)));
  }
  const at::Tensor rest = terms.flip({1}).cumsum(1).flip({1});  // contiguous (BH, nb, M, D1)
  dstart.copy_(rest.select(1, 0)).baddbmm_(Tr(qb.select(1, 0)), gp.select(1, 0));
  const at::Tensor q3 = Batches(qb), k3 = Batches(kb), va3 = Batches(vab), g3 = Batches(gp),
                   rest3 = Batches(rest);
  at::Tensor dscores = at::bmm(g3, Tr(va3)).tril_();
  at::Tensor dq3 = Batches(dq), dk3 = Batches(dk), dv3 = Batches(dv);
  at::Tensor dq4 = dq;  // a handle: out= arguments are non-const
  at::matmul_out(dq4, gp, Tr(states.narrow(1, 0, nb)));
  dq3.baddbmm_(dscores, k3);
  at::bmm_out(dk3, Tr(dscores), q3).baddbmm_(va3, Tr(rest3));
  at::bmm_out(dv3, Tr(Batches(scores)), g3.narrow(2, 0, D)).baddbmm_(k3, rest3.narrow(2, 0, D));
}

// The autograd node. Inputs: φq, φk, v (B,H,T,·) in the state dtype, s_start (B,H,M,D),
// z_start (B,H,M), and optionally the per-block deltas already computed by the caller (no
// gradient flows through them; the backward differentiates K_jᵀV'_j analytically).
// Outputs: out (B,T,H,D) — heads-last so merging heads is a view — s_end, z_end.
class BlockCausalAttention : public torch::autograd::Function<BlockCausalAttention> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& phi_q,
                               const at::Tensor& phi_k, const at::Tensor& v,
                               const at::Tensor& s_start, const at::Tensor& z_start,
                               const c10::optional<at::Tensor>& deltas, int64_t block) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::ScalarType dtype = s_start.scalar_type();
    const Blocking g = MakeBlocking(phi_k, v, block);
    const int64_t BH = g.BH(), nb = g.nb, M = g.M, D = g.D, D1 = D + 1;
    const at::Tensor qb = ToBlocks(phi_q, g, dtype);  // (BH, nb, b, M)
    const at::Tensor kb = ToBlocks(phi_k, g, dtype);
    const at::Tensor vab = AugmentedValues(v, g, dtype);  // (BH, nb, b, D1)
    const at::Tensor kv = deltas.has_value() && deltas->defined()
                              ? deltas->to(dtype).contiguous().view({BH, nb, M, D1})
                              : at::Tensor();

    at::Tensor states = at::empty({BH, nb + 1, M, D1}, qb.options());
    states.select(1, 0).narrow(2, 0, D).copy_(s_start.reshape({BH, M, D}));
    states.select(1, 0).select(2, D).copy_(z_start.reshape({BH, M}));
    at::Tensor scores = at::empty({BH, nb, g.b, g.b}, qb.options());
    at::Tensor numden = at::empty({BH, nb, g.b, D1}, qb.options());
    if (UseBlasLoops(qb)) {
      AT_DISPATCH_FLOATING_TYPES(dtype, "attention_forward", [&] {
        ForwardBlocksBlas<scalar_t>(qb, kb, vab, kv, states, scores, numden);
      });
    } else {
      ForwardBlocksTorch(qb, kb, vab, kv, states, scores, numden);
    }
    const at::Tensor end = states.select(1, nb);  // (BH, M, D1)

    // out = num / den where den > floor, else 0: dividing by +inf gives exact zeros (and zero
    // gradient in the backward) without a second select.
    const at::Tensor nd = numden.view({g.B, g.H, g.padded, D1}).narrow(2, 0, g.T);
    const at::Tensor den = nd.select(3, D);
    const at::Tensor den_safe = at::where(den > kDenominatorFloor, den,
                                          at::full({}, std::numeric_limits<double>::infinity(),
                                                   den.options()));  // (B,H,T)
    at::Tensor out = at::empty({g.B, g.T, g.H, D}, qb.options());
    at::Tensor out_h = out.permute({0, 2, 1, 3});  // (B,H,T,D) view
    at::div_out(out_h, nd.narrow(3, 0, D), den_safe.unsqueeze(-1));

    ctx->set_materialize_grads(false);  // unused end states get no zero-filled gradients
    ctx->save_for_backward({qb, kb, vab, states, scores, den_safe, out});
    ctx->saved_data["T"] = g.T;
    // States are handed out contiguous (callers view and update them in place).
    return {out, end.narrow(2, 0, D).reshape({g.B, g.H, M, D}).contiguous(),
            end.select(2, D).reshape({g.B, g.H, M}).contiguous()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &qb = saved[0], &kb = saved[1], &vab = saved[2], &states = saved[3],
                     &scores = saved[4], &den_safe = saved[5], &out = saved[6];
    const int64_t T_ = ctx->saved_data["T"].toInt();
    const int64_t B = out.size(0), H = out.size(2), D = out.size(3), D1 = D + 1;
    const int64_t BH = B * H, nb = qb.size(1), b = qb.size(2), M = qb.size(3);
    const int64_t padded = nb * b;
    const auto opts = qb.options();

    // G' = [dout/den | −(dout·out)/den]; zero for padded rows (and for rows with den ≤ floor,
    // where den_safe = inf).
    const bool dense = grads[0].defined() && padded == T_;
    at::Tensor gp =
        dense ? at::empty({B, H, padded, D1}, opts) : at::zeros({B, H, padded, D1}, opts);
    if (grads[0].defined()) {
      const at::Tensor out_h = out.permute({0, 2, 1, 3});  // (B,H,T,D)
      at::Tensor gnum = gp.narrow(2, 0, T_).narrow(3, 0, D);
      at::div_out(gnum, grads[0].permute({0, 2, 1, 3}), den_safe.unsqueeze(-1));
      at::Tensor gden = gp.narrow(2, 0, T_).select(3, D);
      at::sum_out(gden, gnum * out_h, {-1}).neg_();
    }
    gp = gp.view({BH, nb, b, D1});

    at::Tensor dstart = at::empty({BH, M, D1}, opts);  // dS'_end in, dS'_start out
    if (grads[1].defined()) {
      dstart.narrow(2, 0, D).copy_(grads[1].reshape({BH, M, D}));
    } else {
      dstart.narrow(2, 0, D).zero_();
    }
    if (grads[2].defined()) {
      dstart.select(2, D).copy_(grads[2].reshape({BH, M}));
    } else {
      dstart.select(2, D).zero_();
    }
    at::Tensor dq = at::empty({BH, nb, b, M}, opts), dk = at::empty({BH, nb, b, M}, opts);
    at::Tensor dv = at::empty({BH, nb, b, D}, opts);
    if (UseBlasLoops(qb)) {
      AT_DISPATCH_FLOATING_TYPES(qb.scalar_type(), "attention_backward", [&] {
        BackwardBlocksBlas<scalar_t>(qb, kb, vab, states, scores, gp, dq, dk, dv, dstart);
      });
    } else {
      BackwardBlocksTorch(qb, kb, vab, states, scores, gp, dq, dk, dv, dstart);
    }

    auto unblock = [&](const at::Tensor& t) {
      return t.view({B, H, padded, t.size(3)}).narrow(2, 0, T_);
    };
    return {unblock(dq),
            unblock(dk),
            unblock(dv),
            dstart.narrow(2, 0, D).reshape({B, H, M, D}).contiguous(),
            dstart.select(2, D).reshape({B, H, M}).contiguous(),
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

void ForceTorchAttentionPath(bool force) { force_torch_path.store(force); }

at::ScalarType StateDtype(at::ScalarType activation_dtype) {
  return activation_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

AttentionState ZeroAttentionState(int64_t batch, int64_t heads, int64_t features,
                                  int64_t head_dim, const at::TensorOptions& options) {
  return {at::zeros({batch, heads, features, head_dim}, options),
          at::zeros({batch, heads, features}, options)};
}

AttentionOutput CausalLinearAttention(const at::Tensor& phi_q, const at::Tensor& phi_k,
                                      const at::Tensor& v, const AttentionState& start,
                                      int64_t block, const at::Tensor& block_deltas) {
  // States and their sums stay in fp32 even inside a bf16 autocast region.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::ScalarType dtype = start.s.scalar_type();
  // Casting outside the node keeps bf16 inputs' gradients flowing through autograd's cast.
  const variable_list r = BlockCausalAttention::apply(
      phi_q.to(dtype), phi_k.to(dtype), v.to(dtype), start.s, start.z,
      block_deltas.defined() ? c10::optional<at::Tensor>(block_deltas) : c10::nullopt, block);
  return {r[0].permute({0, 2, 1, 3}), {r[1], r[2]}};
}

at::Tensor AttentionBlockDeltas(const at::Tensor& phi_k, const at::Tensor& v,
                                at::ScalarType state_dtype, int64_t block) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::NoGradGuard no_grad;
  const Blocking g = MakeBlocking(phi_k, v, block);
  const at::Tensor kb = ToBlocks(phi_k, g, state_dtype), vab = AugmentedValues(v, g, state_dtype);
  if (!UseBlasLoops(kb)) return at::matmul(Tr(kb), vab);
  at::Tensor deltas = at::empty({g.BH(), g.nb, g.M, g.D + 1}, kb.options());
  AT_DISPATCH_FLOATING_TYPES(state_dtype, "attention_block_deltas", [&] {
    const int b = static_cast<int>(g.b), M = static_cast<int>(g.M), D1 = static_cast<int>(g.D + 1);
    const scalar_t *k = kb.data_ptr<scalar_t>(), *va = vab.data_ptr<scalar_t>();
    scalar_t* out = deltas.data_ptr<scalar_t>();
    for (int64_t blk = 0; blk < g.BH() * g.nb; ++blk) {
      Gemm<scalar_t>(true, false, M, D1, b, k + blk * b * M, M, va + blk * b * D1, D1, false,
                     out + blk * M * D1, D1);
    }
  });
  return deltas;
}

AttentionState SumBlockDeltas(const at::Tensor& block_deltas, int64_t batch, int64_t heads) {
  at::NoGradGuard no_grad;
  const int64_t M = block_deltas.size(2), D = block_deltas.size(3) - 1;
  const at::Tensor total = block_deltas.sum(1);  // (B·H, M, D+1)
  return {total.narrow(2, 0, D).reshape({batch, heads, M, D}).contiguous(),
          total.select(2, D).reshape({batch, heads, M}).contiguous()};
}

AttentionState AttentionStateDelta(const at::Tensor& phi_k, const at::Tensor& v,
                                   at::ScalarType state_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor k = phi_k.to(state_dtype);
  return {at::matmul(k.transpose(-1, -2), v.to(state_dtype)), k.sum(2)};
}

}  // namespace slim
