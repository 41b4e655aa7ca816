// The short causal convolution: each output is silu of its window's dot product with the taps (written out
// term by term here), and a call continuing from the carried state equals one call over the whole sequence.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "kernels/mixer_test_util.h"
#include "kernels/short_conv.h"

namespace linearize::kernels {
namespace {

TEST(ShortConv, EachOutputIsSiluOfItsCausalWindowTimesTheTaps) {
  const int64_t B = 2, T = 7, C = 5, K = 4;
  const at::Tensor x = test::randn({B, T, C}, 1), w = test::randn({C, K}, 2), b = test::randn({C}, 3);
  const auto out = short_conv(x, w, b, {});
  ASSERT_EQ(out.y.sizes(), at::IntArrayRef({B, T, C}));
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor acc = b.expand({B, C}).clone();
    for (int64_t i = 0; i < K; ++i) {
      const int64_t src = t - (K - 1) + i;  // tap i reads x_{t-K+1+i}; zeros before the first token
      if (src >= 0) acc = acc + w.select(1, i) * x.select(1, src);
    }
    // fp64: the same few products in another order, 1e-12 is rounding only.
    EXPECT_TRUE(at::allclose(out.y.select(1, t), at::silu(acc), 1e-12, 1e-12)) << "t = " << t;
  }
  EXPECT_TRUE(at::equal(out.state, x.narrow(1, T - (K - 1), K - 1)));
}

TEST(ShortConv, CarriedStateEqualsOneCall) {
  const at::Tensor x = test::randn({2, 9, 6}, 4), w = test::randn({6, 4}, 5), b = test::randn({6}, 6);
  const auto whole = short_conv(x, w, b, {});
  at::Tensor state;
  std::vector<at::Tensor> parts;
  for (const auto& [start, length] : std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {2, 1}, {3, 5}, {8, 1}}) {
    auto part = short_conv(x.narrow(1, start, length), w, b, state);
    parts.push_back(part.y);
    state = part.state;
  }
  EXPECT_TRUE(at::allclose(at::cat(parts, 1), whole.y, 1e-12, 1e-12));
  EXPECT_TRUE(at::equal(state, whole.state));
  EXPECT_THROW(short_conv(x, w, b, at::zeros({2, 2, 6}, x.options())), c10::Error);
}

}  // namespace
}  // namespace linearize::kernels
