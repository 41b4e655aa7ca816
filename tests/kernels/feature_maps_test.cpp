// Feature maps: shapes, the properties each map promises, and Hedgehog's identity-like initialisation.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "kernels/feature_maps.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels {
namespace {

TEST(KernelFeatureMaps, SoftmaxOverTheHeadDimension) {
  const at::Tensor x = test::randn({2, 5, 3, 8}, 1);
  const at::Tensor sm = softmax_d(x);
  EXPECT_TRUE(at::allclose(sm.sum(-1), at::ones({2, 5, 3}, at::kDouble)));
}

TEST(KernelFeatureMaps, HedgehogIsTwoSoftmaxesOfAPerHeadProjection) {
  const int64_t H = 3, d = 8, f = 4;
  const at::Tensor x = test::randn({2, 5, H, d}, 2);
  const at::Tensor w = truncated_identity(H, d, f, at::TensorOptions().dtype(at::kDouble));
  EXPECT_TRUE(at::equal(w[1], at::eye(d, f, at::kDouble)));
  const at::Tensor phi = hedgehog(x, w);
  ASSERT_EQ(phi.sizes(), at::IntArrayRef({2, 5, H, 2 * f}));
  // identity init: the projection keeps the first f channels of every head
  EXPECT_TRUE(at::allclose(phi.narrow(-1, 0, f), at::softmax(x.narrow(-1, 0, f), -1)));
  EXPECT_TRUE(at::allclose(phi.narrow(-1, f, f), at::softmax(-x.narrow(-1, 0, f), -1)));
  // per-head weights and bias: head h uses W[h], b[h] only
  const at::Tensor w2 = test::randn({H, d, f}, 3), b = test::randn({H, f}, 4);
  const at::Tensor y = at::matmul(x.select(2, 1), w2[1]) + b[1];
  EXPECT_TRUE(at::allclose(hedgehog(x, w2, b).select(2, 1), at::cat({at::softmax(y, -1), at::softmax(-y, -1)}, -1)));
  EXPECT_THROW(hedgehog(x, w2.narrow(1, 0, d - 1)), c10::Error);
}

}  // namespace
}  // namespace linearize::kernels
