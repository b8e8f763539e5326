// ExactSum: additions are exact, so subtraction undoes them bit for bit whatever the dynamic
// range; Value() is within an ulp of the exact sum; the LibTorch-ops implementation (used off
// CPU) agrees with the CPU loops bit for bit; non-finite inputs poison their element.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/exact_sum.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

// Values spanning e^±80 (and a subnormal), both signs: far beyond what fp32 subtraction
// survives.
at::Tensor WideRangeValues(int64_t n, at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = testing::Gen(seed);
  const at::Tensor mag = at::exp((at::randn({n}, gen, at::kDouble) * 25.0).clamp(-80, 80));
  const at::Tensor sign = at::randint(2, {n}, gen, at::kDouble) * 2 - 1;
  at::Tensor v = (mag * sign).to(dtype);
  v[0] = dtype == at::kFloat ? 1e-44 : 1e-320;  // a subnormal
  return v;
}

bool BitwiseEqual(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a, b);
}

class ExactSumTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void TearDown() override { ExactSum::ForceGenericForTesting(false); }
};

TEST_P(ExactSumTest, SubtractUndoesAddBitForBitAcrossAnyDynamicRange) {
  const at::ScalarType dtype = GetParam();
  for (bool generic : {false, true}) {
    ExactSum::ForceGenericForTesting(generic);
    const int64_t slices = 40, n = 257;
    std::vector<at::Tensor> deltas;
    for (int64_t i = 0; i < slices; ++i) deltas.push_back(WideRangeValues(n, dtype, 100 + i));
    ExactSum sum(deltas[0]);
    std::vector<at::Tensor> prefix;  // Value() after each addition
    for (const at::Tensor& d : deltas) {
      sum.Add(d);
      prefix.push_back(sum.Value());
    }
    for (int64_t i = slices - 1; i >= 1; --i) {
      sum.Subtract(deltas[i]);
      const at::Tensor v = sum.Value();
      ASSERT_TRUE(BitwiseEqual(v, prefix[i - 1]))
          << "after removing slice " << i << " generic=" << generic << " max diff "
          << (v - prefix[i - 1]).abs().max().item<double>() << " nan " << v.isnan().sum().item<int64_t>();
    }
    sum.Subtract(deltas[0]);
    EXPECT_EQ(sum.Value().abs().max().item<double>(), 0.0) << "generic=" << generic;
  }
}

TEST_P(ExactSumTest, ValueIsTheExactSumRoundedWithinAnUlp) {
  const at::ScalarType dtype = GetParam();
  const double big = dtype == at::kFloat ? 1e30 : 1e300;
  // big + 1 − big: floating point gives 0, the exact sum is 1.
  const at::Tensor a = at::full({3}, big, dtype), b = at::ones({3}, dtype);
  ExactSum sum(a);
  sum.Add(a);
  sum.Add(b);
  sum.Subtract(a);
  EXPECT_TRUE(BitwiseEqual(sum.Value(), b));

  // Many fp32 values against their fp64 sum (exact for these: a dynamic range of 2^20).
  if (dtype == at::kFloat) {
    at::Generator gen = testing::Gen(3);
    const at::Tensor x = (at::randn({64, 100}, gen, at::kDouble) * 1000).to(at::kFloat);
    ExactSum s(x.select(0, 0));
    for (int64_t i = 0; i < 64; ++i) s.Add(x.select(0, i));
    const at::Tensor want = x.to(at::kDouble).sum(0);
    const at::Tensor got = s.Value().to(at::kDouble);
    const at::Tensor ulp = at::abs(want.to(at::kFloat).to(at::kDouble)) * std::ldexp(1.0, -23);
    EXPECT_TRUE((got - want).abs().le(ulp).all().item<bool>());
  }
}

TEST_P(ExactSumTest, GenericImplementationAgreesWithCpuLoops) {
  const at::ScalarType dtype = GetParam();
  std::vector<at::Tensor> values;
  for (int i = 0; i < 10; ++i) values.push_back(WideRangeValues(500, dtype, 7 + i).view({5, 100}));
  at::Tensor results[2];
  for (bool generic : {false, true}) {
    ExactSum::ForceGenericForTesting(generic);
    ExactSum sum(values[0]);
    for (size_t i = 0; i < values.size(); ++i) {
      if (i % 3 == 2) sum.Subtract(values[i]);
      else sum.Add(values[i]);
    }
    results[generic] = sum.Value();
  }
  EXPECT_TRUE(BitwiseEqual(results[0], results[1]));
  EXPECT_EQ(results[0].sizes(), (std::vector<int64_t>{5, 100}));
}

TEST_P(ExactSumTest, NonFiniteInputPoisonsOnlyItsElement) {
  const at::ScalarType dtype = GetParam();
  for (bool generic : {false, true}) {
    ExactSum::ForceGenericForTesting(generic);
    at::Tensor x = at::ones({4}, dtype);
    x[1] = std::numeric_limits<double>::infinity();
    x[2] = std::numeric_limits<double>::quiet_NaN();
    ExactSum sum(x);
    sum.Add(x);
    sum.Subtract(x);  // inf − inf is not a number either
    const at::Tensor v = sum.Value();
    EXPECT_EQ(v[0].item<double>(), 0.0);
    EXPECT_TRUE(std::isnan(v[1].item<double>()));
    EXPECT_TRUE(std::isnan(v[2].item<double>()));
    EXPECT_EQ(v[3].item<double>(), 0.0);
  }
}

TEST_P(ExactSumTest, RefusesAnotherShapeOrDtype) {
  const at::ScalarType dtype = GetParam();
  ExactSum sum(at::zeros({2, 3}, dtype));
  EXPECT_THROW(sum.Add(at::zeros({3, 2}, dtype)), c10::Error);
  EXPECT_THROW(sum.Add(at::zeros({2, 3}, dtype == at::kFloat ? at::kDouble : at::kFloat)), c10::Error);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ExactSumTest, ::testing::Values(at::kFloat, at::kDouble),
                         [](const ::testing::TestParamInfo<at::ScalarType>& info) {
                           return std::string(info.param == at::kFloat ? "Fp32" : "Fp64");
                         });

TEST(ExactSum, OverflowBeyondTheDtypeIsInfinite) {
  const at::Tensor big = at::full({2}, 3e38, at::kFloat);
  ExactSum sum(big);
  sum.Add(big);
  sum.Add(big);
  EXPECT_TRUE(std::isinf(sum.Value()[0].item<double>()));
  sum.Subtract(big);  // back in range: exact again
  EXPECT_EQ(sum.Value()[0].item<float>(), 3e38f);
}

}  // namespace
}  // namespace slim
