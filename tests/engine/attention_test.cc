// Causal linear attention and feature maps against a quadratic masked reference, plus
// finite-difference checks of the gradients, including those of the carried states.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <functional>
#include <vector>

#include "engine/attention_features.h"
#include "engine/causal_attention.h"
#include "engine/softmax_attention.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

using testing::Gen;
using testing::RelErr;

// out_i = (S0ᵀφq_i + Σ_{j≤i} (φq_i·φk_j) v_j) / (z0·φq_i + Σ_{j≤i} φq_i·φk_j), with an
// explicit T×T lower-triangular mask.
at::Tensor QuadraticReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const AttentionState& start) {
  const int64_t T = q.size(2);
  const at::Tensor mask = at::ones({T, T}, q.options()).tril();
  const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * mask;
  const at::Tensor num = at::matmul(scores, v) + at::matmul(q, start.s);
  const at::Tensor den = scores.sum(-1) + at::matmul(q, start.z.unsqueeze(-1)).squeeze(-1);
  return num / den.unsqueeze(-1);
}

struct Inputs {
  at::Tensor q, k, v;
  AttentionState start;
};

// Positive features (as every map produces) and a non-zero start state.
Inputs RandomInputs(int64_t B, int64_t H, int64_t T, int64_t M, int64_t d, at::ScalarType dtype,
                    uint64_t seed) {
  at::Generator g = Gen(seed);
  auto opt = at::TensorOptions().dtype(dtype);
  Inputs in;
  in.q = at::exp(at::randn({B, H, T, M}, g, opt) * 0.5);
  in.k = at::exp(at::randn({B, H, T, M}, g, opt) * 0.5);
  in.v = at::randn({B, H, T, d}, g, opt);
  in.start.s = at::randn({B, H, M, d}, g, opt) * 3.0;
  in.start.z = at::exp(at::randn({B, H, M}, g, opt)) * 3.0;
  return in;
}

TEST(CausalAttention, MatchesQuadraticReferenceFp64) {
  for (int64_t block : {1, 7, 16, 64, 1000}) {
    Inputs in = RandomInputs(2, 3, 100, 8, 5, at::kDouble, 1);
    const AttentionOutput got = CausalLinearAttention(in.q, in.k, in.v, in.start, block);
    EXPECT_LE(RelErr(got.out, QuadraticReference(in.q, in.k, in.v, in.start)), 1e-10)
        << "block " << block;
    const at::Tensor total_s = in.start.s + at::matmul(in.k.transpose(-1, -2), in.v);
    EXPECT_LE(RelErr(got.end.s, total_s), 1e-12);
    EXPECT_LE(RelErr(got.end.z, in.start.z + in.k.sum(2)), 1e-12);
  }
}

TEST(CausalAttention, MatchesQuadraticReferenceFp32AtL1024) {
  Inputs in = RandomInputs(1, 2, 1024, 16, 8, at::kFloat, 2);
  const AttentionOutput got = CausalLinearAttention(in.q, in.k, in.v, in.start, 64);
  const Inputs ref64{in.q.to(at::kDouble), in.k.to(at::kDouble), in.v.to(at::kDouble),
                     {in.start.s.to(at::kDouble), in.start.z.to(at::kDouble)}};
  EXPECT_LE(RelErr(got.out, QuadraticReference(ref64.q, ref64.k, ref64.v, ref64.start)), 1e-5);
}

// Gradients of ⟨g_out, out⟩ + ⟨g_s, S_end⟩ + ⟨g_z, z_end⟩ w.r.t. q, k, v, S_start, z_start.
std::vector<at::Tensor> BlockGradients(const Inputs& in, const at::Tensor& g_out,
                                       const at::Tensor& g_s, const at::Tensor& g_z, int64_t block) {
  std::vector<at::Tensor> leaves{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 in.v.clone().requires_grad_(), in.start.s.clone().requires_grad_(),
                                 in.start.z.clone().requires_grad_()};
  const AttentionOutput o =
      CausalLinearAttention(leaves[0], leaves[1], leaves[2], {leaves[3], leaves[4]}, block);
  torch::autograd::backward({o.out, o.end.s, o.end.z}, {g_out, g_s, g_z});
  std::vector<at::Tensor> grads;
  for (auto& l : leaves) grads.push_back(l.grad());
  return grads;
}

TEST(CausalAttention, GradientsMatchQuadraticReferenceFp64) {
  Inputs in = RandomInputs(2, 2, 37, 6, 4, at::kDouble, 3);
  at::Generator g = Gen(4);
  const at::Tensor g_out = at::randn(in.v.sizes(), g, at::kDouble);
  const std::vector<at::Tensor> got =
      BlockGradients(in, g_out, at::zeros_like(in.start.s), at::zeros_like(in.start.z), 8);
  std::vector<at::Tensor> leaves{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                 in.v.clone().requires_grad_(), in.start.s.clone().requires_grad_(),
                                 in.start.z.clone().requires_grad_()};
  QuadraticReference(leaves[0], leaves[1], leaves[2], {leaves[3], leaves[4]}).backward(g_out);
  const char* names[] = {"phi_q", "phi_k", "v", "s_start", "z_start"};
  for (size_t i = 0; i < leaves.size(); ++i) {
    EXPECT_LE(RelErr(got[i], leaves[i].grad()), 1e-10) << names[i];
  }
}

// The ATen path CUDA takes (no BLAS loops), run on the CPU in fp64: outputs, end states and all
// five input gradients against the quadratic reference, for lengths that pad the last block,
// block = 1, and with the per-block deltas given by the caller (the SLiM step's path).
TEST(CausalAttention, TorchPathMatchesQuadraticReferenceFp64) {
  testing::TorchAttentionPath torch_path;
  for (int64_t T : {7, 33, 50}) {
    for (int64_t block : {1, 8, 16}) {
      for (bool deltas : {false, true}) {
        const Inputs in = RandomInputs(2, 3, T, 6, 4, at::kDouble, 20 + T);
        at::Generator g = Gen(30 + T);
        const at::Tensor g_out = at::randn(in.v.sizes(), g, at::kDouble);
        const at::Tensor g_s = at::randn(in.start.s.sizes(), g, at::kDouble);
        const at::Tensor g_z = at::randn(in.start.z.sizes(), g, at::kDouble);
        std::vector<at::Tensor> leaves{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                       in.v.clone().requires_grad_(), in.start.s.clone().requires_grad_(),
                                       in.start.z.clone().requires_grad_()};
        const at::Tensor block_deltas =
            deltas ? AttentionBlockDeltas(in.k, in.v, at::kDouble, block) : at::Tensor();
        const AttentionOutput got =
            CausalLinearAttention(leaves[0], leaves[1], leaves[2], {leaves[3], leaves[4]}, block, block_deltas);
        const std::string where = "T=" + std::to_string(T) + " block=" + std::to_string(block) +
                                  (deltas ? " with deltas" : "");
        EXPECT_LE(RelErr(got.out, QuadraticReference(in.q, in.k, in.v, in.start)), 1e-10) << where;
        EXPECT_LE(RelErr(got.end.s, in.start.s + at::matmul(in.k.transpose(-1, -2), in.v)), 1e-12) << where;
        EXPECT_LE(RelErr(got.end.z, in.start.z + in.k.sum(2)), 1e-12) << where;
        torch::autograd::backward({got.out, got.end.s, got.end.z}, {g_out, g_s, g_z});

        std::vector<at::Tensor> ref{in.q.clone().requires_grad_(), in.k.clone().requires_grad_(),
                                    in.v.clone().requires_grad_(), in.start.s.clone().requires_grad_(),
                                    in.start.z.clone().requires_grad_()};
        const at::Tensor ref_out = QuadraticReference(ref[0], ref[1], ref[2], {ref[3], ref[4]});
        const at::Tensor ref_end_s = ref[3] + at::matmul(ref[1].transpose(-1, -2), ref[2]);
        const at::Tensor ref_end_z = ref[4] + ref[1].sum(2);
        torch::autograd::backward({ref_out, ref_end_s, ref_end_z}, {g_out, g_s, g_z});
        const char* names[] = {"phi_q", "phi_k", "v", "s_start", "z_start"};
        for (size_t i = 0; i < leaves.size(); ++i) {
          EXPECT_LE(RelErr(leaves[i].grad(), ref[i].grad()), 1e-10) << names[i] << " " << where;
        }
      }
    }
  }
}

// Central differences of a scalar function of one tensor, coordinate by coordinate.
at::Tensor FiniteDifference(const std::function<double()>& f, at::Tensor x, double h) {
  at::NoGradGuard no_grad;
  at::Tensor grad = at::zeros_like(x);
  at::Tensor flat = x.view({-1}), gflat = grad.view({-1});
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double orig = flat[i].item<double>();
    flat[i] = orig + h;
    const double up = f();
    flat[i] = orig - h;
    const double down = f();
    flat[i] = orig;
    gflat[i] = (up - down) / (2 * h);
  }
  return grad;
}

// Finite-difference check (fp64) of the attention's gradients, including the gradient w.r.t.
// the incoming state and the gradient arriving at the outgoing state.
TEST(CausalAttention, FiniteDifferenceIncludingStatesFp64) {
  Inputs in = RandomInputs(1, 2, 11, 3, 2, at::kDouble, 5);
  at::Generator g = Gen(6);
  const at::Tensor g_out = at::randn(in.v.sizes(), g, at::kDouble);
  const at::Tensor g_s = at::randn(in.start.s.sizes(), g, at::kDouble);
  const at::Tensor g_z = at::randn(in.start.z.sizes(), g, at::kDouble);
  const int64_t block = 4;
  const std::vector<at::Tensor> analytic = BlockGradients(in, g_out, g_s, g_z, block);
  auto objective = [&] {
    const AttentionOutput o = CausalLinearAttention(in.q, in.k, in.v, in.start, block);
    return ((o.out * g_out).sum() + (o.end.s * g_s).sum() + (o.end.z * g_z).sum()).item<double>();
  };
  std::vector<at::Tensor> xs{in.q, in.k, in.v, in.start.s, in.start.z};
  const char* names[] = {"phi_q", "phi_k", "v", "s_start", "z_start"};
  for (size_t i = 0; i < xs.size(); ++i) {
    // Central differences with h = 1e-6 have truncation error O(h²) and rounding O(1e-16/h).
    EXPECT_LE(RelErr(analytic[i], FiniteDifference(objective, xs[i], 1e-6)), 1e-7) << names[i];
  }
}

TEST(CausalAttention, CarryingStateAcrossCallsEqualsOneCall) {
  Inputs in = RandomInputs(2, 2, 50, 4, 3, at::kDouble, 7);
  const AttentionOutput whole = CausalLinearAttention(in.q, in.k, in.v, in.start, 8);
  const AttentionOutput a = CausalLinearAttention(in.q.narrow(2, 0, 21), in.k.narrow(2, 0, 21),
                                                  in.v.narrow(2, 0, 21), in.start, 8);
  const AttentionOutput b = CausalLinearAttention(in.q.narrow(2, 21, 29), in.k.narrow(2, 21, 29),
                                                  in.v.narrow(2, 21, 29), a.end, 8);
  EXPECT_LE(RelErr(at::cat({a.out, b.out}, 2), whole.out), 1e-12);
  EXPECT_LE(RelErr(b.end.s, whole.end.s), 1e-12);
  const AttentionState d = AttentionStateDelta(in.k, in.v, at::kDouble);
  EXPECT_LE(RelErr(in.start.s + d.s, whole.end.s), 1e-12);
  EXPECT_LE(RelErr(in.start.z + d.z, whole.end.z), 1e-12);
}

TEST(CausalAttention, StatesStayFp32UnderBf16Inputs) {
  Inputs in = RandomInputs(1, 1, 20, 4, 4, at::kFloat, 8);
  const AttentionOutput o = CausalLinearAttention(in.q.to(at::kBFloat16), in.k.to(at::kBFloat16),
                                                  in.v.to(at::kBFloat16), in.start, 8);
  EXPECT_EQ(o.end.s.scalar_type(), at::kFloat);
  EXPECT_EQ(o.out.scalar_type(), at::kFloat);
  EXPECT_LE(RelErr(o.out, QuadraticReference(in.q, in.k, in.v, in.start)), 2e-2);
}

// ---- feature maps ----

at::Tensor Projection(int64_t H, int64_t M, int64_t d, uint64_t seed) {
  return DrawOrthogonalProjection(1, H, M, d, seed)[0];
}

TEST(FeatureMaps, OrthogonalProjectionBlocksAreOrthogonalAndSeeded) {
  const int64_t d = 8, M = 20;  // two full blocks and a partial one
  const at::Tensor w = Projection(2, M, d, 11);
  ASSERT_EQ(w.sizes(), (at::IntArrayRef{2, M, d}));
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t start = 0; start < M; start += d) {
      const int64_t rows = std::min(d, M - start);
      const at::Tensor blk = w[h].narrow(0, start, rows);
      const at::Tensor unit = blk / blk.norm(2, {1}, true);
      const at::Tensor gram = at::matmul(unit, unit.t());
      EXPECT_LE((gram - at::eye(rows, at::kDouble)).abs().max().item<double>(), 1e-12);
    }
  }
  EXPECT_TRUE(at::equal(w, Projection(2, M, d, 11)));
  EXPECT_FALSE(at::equal(w, Projection(2, M, d, 12)));
}

// Max |attention weight − softmax weight| over a few random positions for `map`, one entry per
// projection height in `rows` (favor+: M = rows features; learned: M = 2·rows).
std::vector<double> SoftmaxWeightErrors(FeatureMap map, const std::vector<int64_t>& rows) {
  const int64_t d = 16, T = 6;
  at::Generator g = Gen(13);
  const at::Tensor x = at::randn({1, 1, T, d}, g, at::kDouble) * 0.25;
  const at::Tensor exact = at::exp(at::matmul(x, x.transpose(-1, -2)) / std::sqrt(double(d)));
  const at::Tensor pe = exact / exact.sum(-1, true);
  std::vector<double> errors;
  for (int64_t r : rows) {
    const at::Tensor w = Projection(1, r, d, 14);
    const at::Tensor fq = QueryFeatures(map, x, w, at::kDouble), fk = KeyFeatures(map, x, w, at::kDouble);
    const at::Tensor approx = at::matmul(fq, fk.transpose(-1, -2));
    errors.push_back((approx / approx.sum(-1, true) - pe).abs().max().item<double>());
    std::printf("[ %s ] M=%lld max attention-weight error %.4f\n", FeatureMapName(map).c_str(),
                static_cast<long long>(fq.size(-1)), errors.back());
  }
  return errors;
}

// favor+ features approximate the softmax kernel: φ(q)·φ(k) ∝ exp(q·k/√d) up to per-query
// constants, so normalised attention weights match softmax ones in expectation.
TEST(FeatureMaps, FavorPlusApproximatesSoftmaxAttention) {
  const std::vector<double> errors = SoftmaxWeightErrors(FeatureMap::kFavorPlus, {64, 1024, 16384});
  // Monte Carlo error falls like 1/√M: 16× more features, about 4× less error.
  EXPECT_LT(errors[2], errors[0]);
  EXPECT_LE(errors[2], 0.01);
}

// The learned map at its initialisation (favor+'s orthogonal rows) estimates softmax attention
// like favor+ does, with the symmetric (±ω) estimator; and its gradient reaches its weight
// (finite differences in fp64, through the attention).
TEST(FeatureMaps, LearnedMapStartsCloseToSoftmaxAndLearns) {
  const std::vector<double> errors = SoftmaxWeightErrors(FeatureMap::kLearned, {32, 512, 8192});
  EXPECT_LT(errors[2], errors[0]);
  EXPECT_LE(errors[2], 0.01);

  at::Generator g = Gen(20);
  const at::Tensor w = Projection(2, 3, 4, 19);
  const at::Tensor xq = at::randn({1, 2, 5, 4}, g, at::kDouble), xk = at::randn({1, 2, 5, 4}, g, at::kDouble);
  const at::Tensor v = at::randn({1, 2, 5, 3}, g, at::kDouble), up = at::randn({1, 2, 5, 3}, g, at::kDouble);
  const AttentionState start = ZeroAttentionState(1, 2, 6, 3, at::kDouble);
  auto objective = [&](const at::Tensor& weight) {
    return (CausalLinearAttention(QueryFeatures(FeatureMap::kLearned, xq, weight, at::kDouble),
                                  KeyFeatures(FeatureMap::kLearned, xk, weight, at::kDouble), v, start, 2).out * up).sum();
  };
  at::Tensor lw = w.clone().requires_grad_();
  objective(lw).backward();
  const at::Tensor numeric = FiniteDifference([&] { return objective(w).item<double>(); }, w, 1e-6);
  EXPECT_GT(numeric.abs().max().item<double>(), 1e-3);  // the weight does matter
  EXPECT_LE(RelErr(lw.grad(), numeric), 1e-6);
}

TEST(FeatureMaps, FinitePositiveForExtremeInputs) {
  const int64_t d = 8;
  const at::Tensor w = Projection(1, 16, d, 15);
  for (double scale : {1e-3, 1.0, 1e2, 1e4}) {
    at::Generator g = Gen(16);
    const at::Tensor x = at::randn({1, 1, 9, d}, g, at::kFloat) * scale;
    for (FeatureMap map : {FeatureMap::kFavorPlus, FeatureMap::kRelu, FeatureMap::kEluPlusOne,
                           FeatureMap::kSquare, FeatureMap::kLearned}) {
      const at::Tensor p = map == FeatureMap::kLearned ? w.narrow(1, 0, 8) * 30.0 : w;  // a large learned W
      for (const at::Tensor& f : {QueryFeatures(map, x, p, at::kFloat), KeyFeatures(map, x, p, at::kFloat)}) {
        EXPECT_TRUE(at::isfinite(f).all().item<bool>()) << FeatureMapName(map) << " scale " << scale;
        EXPECT_TRUE((f >= 0).all().item<bool>()) << FeatureMapName(map);
      }
      if (map == FeatureMap::kFavorPlus) {
        // The data-independent key bound caps every key feature: no overflow possible.
        EXPECT_LE(KeyFeatures(map, x, w, at::kFloat).max().item<double>(), std::exp(kKeyLogFeatureCap));
      }
    }
  }
}

// Finite differences of x ↦ attention output for every map. favor+ query features detach
// their row maximum, a constant that cancels in num/den: the gradient is exact for the output
// (what training uses), not for φq alone, so the check runs through the attention.
TEST(FeatureMaps, FiniteDifferenceThroughAttentionForEveryMapFp64) {
  const int64_t d = 4;
  const at::Tensor w = Projection(2, 6, d, 17);
  at::Generator g = Gen(18);
  const at::Tensor xq = at::randn({1, 2, 5, d}, g, at::kDouble);
  const at::Tensor xk = at::randn({1, 2, 5, d}, g, at::kDouble);
  const at::Tensor v = at::randn({1, 2, 5, 3}, g, at::kDouble);
  const at::Tensor up = at::randn({1, 2, 5, 3}, g, at::kDouble);
  for (FeatureMap map : {FeatureMap::kFavorPlus, FeatureMap::kRelu, FeatureMap::kEluPlusOne,
                         FeatureMap::kSquare, FeatureMap::kLearned}) {
    // The learned map takes (H, M/2, d) = (2, 3, d): six features per head, like favor+.
    const int64_t M = map == FeatureMap::kFavorPlus || map == FeatureMap::kLearned ? 6 : d;
    const AttentionState start = ZeroAttentionState(1, 2, M, 3, at::kDouble);
    const at::Tensor p = map == FeatureMap::kLearned ? w.narrow(1, 0, 3) : w;
    auto out = [&](const at::Tensor& q, const at::Tensor& k) {
      return CausalLinearAttention(QueryFeatures(map, q, p, at::kDouble),
                                   KeyFeatures(map, k, p, at::kDouble), v, start, 2).out;
    };
    at::Tensor lq = xq.clone().requires_grad_(), lk = xk.clone().requires_grad_();
    (out(lq, lk) * up).sum().backward();
    auto f = [&] { return (out(xq, xk) * up).sum().item<double>(); };
    EXPECT_LE(RelErr(lq.grad(), FiniteDifference(f, xq, 1e-6)), 1e-6) << FeatureMapName(map) << " q";
    EXPECT_LE(RelErr(lk.grad(), FiniteDifference(f, xk, 1e-6)), 1e-6) << FeatureMapName(map) << " k";
  }
}

TEST(CausalAttention, DegenerateDenominatorGivesZeroAndFiniteGradient) {
  Inputs in = RandomInputs(1, 1, 8, 3, 2, at::kFloat, 9);
  at::Tensor q = in.q.clone().requires_grad_(), k = at::zeros_like(in.k).requires_grad_();
  const AttentionOutput o = CausalLinearAttention(q, k, in.v, ZeroAttentionState(1, 1, 3, 2, at::kFloat), 4);
  EXPECT_TRUE(at::equal(o.out, at::zeros_like(o.out)));
  (o.out.sum() * 1e30).backward();
  EXPECT_TRUE(at::isfinite(q.grad()).all().item<bool>());
  EXPECT_TRUE(at::isfinite(k.grad()).all().item<bool>());
}

// Softmax attention against its definition written out position by position, and in pieces
// carrying the key/value cache as in one call.
TEST(SoftmaxAttention, MatchesItsDefinitionAndRunsInPieces) {
  const int64_t B = 2, H = 3, T = 11, d = 4;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({B, H, T, d}, Gen(1), at::kDouble), k = at::randn({B, H, T, d}, Gen(2), at::kDouble),
                   v = at::randn({B, H, T, d}, Gen(3), at::kDouble);
  const AttentionOutput whole = CausalSoftmaxAttention(q, k, v, EmptySoftmaxCache(B, H, d, f64));
  at::Tensor expected = at::zeros({B, H, T, d}, f64);
  for (int64_t i = 0; i < T; ++i) {
    // weights_j ∝ exp(q_i·k_j / √d) for j ≤ i.
    const at::Tensor logits = (q.narrow(2, i, 1) * k.narrow(2, 0, i + 1)).sum(-1) / std::sqrt(4.0);  // (B, H, i+1)
    const at::Tensor w = at::exp(logits - std::get<0>(logits.max(-1, true)));
    expected.narrow(2, i, 1).copy_((w / w.sum(-1, true)).unsqueeze(-1).mul(v.narrow(2, 0, i + 1)).sum(2, true));
  }
  EXPECT_LE(RelErr(whole.out, expected), 1e-14);
  EXPECT_EQ(whole.end.s.size(2), T);
  AttentionState cache = EmptySoftmaxCache(B, H, d, f64);
  std::vector<at::Tensor> pieces;
  for (int64_t start = 0; start < T; start += 4) {
    const int64_t n = std::min<int64_t>(4, T - start);
    AttentionOutput piece = CausalSoftmaxAttention(q.narrow(2, start, n), k.narrow(2, start, n), v.narrow(2, start, n), cache);
    pieces.push_back(piece.out);
    cache = piece.end;
  }
  EXPECT_LE(RelErr(at::cat(pieces, 2), whole.out), 1e-14);
  EXPECT_TRUE(at::equal(cache.s, k));
  EXPECT_TRUE(at::equal(cache.z, v));
}

TEST(Rotary, PositionIsGlobalAndNormPreserving) {
  at::Generator g = Gen(19);
  const at::Tensor x = at::randn({1, 2, 30, 8}, g, at::kDouble);
  const at::Tensor whole = ApplyRotary(x, 5, 10000.0);
  const at::Tensor tail = ApplyRotary(x.narrow(2, 12, 18), 17, 10000.0);
  EXPECT_TRUE(at::equal(whole.narrow(2, 12, 18), tail));
  EXPECT_LE(RelErr(whole.norm(2, {-1}), x.norm(2, {-1})), 1e-12);
}

}  // namespace
}  // namespace slim
