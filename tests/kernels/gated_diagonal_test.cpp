// The CPU kernel for GLA's diagonal sub-blocks against its ATen oracle (pairwise exps): scores and
// gradients in fp64, grouped query heads, K not a multiple of the vector width, and gates strong enough
// that any factorised form would overflow.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "kernels/gated_diagonal.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels::detail {
namespace {

using test::max_rel_diff;

struct Case {
  int64_t M = 3, Gq = 2, C = 12, K = 37;
};

// The scores and the gradients of a random projection of them with respect to q, k and the step gates g.
std::vector<at::Tensor> scores_and_grads(bool kernel, const at::Tensor& q0, const at::Tensor& k0,
                                         const at::Tensor& g0, int64_t c) {
  const at::Tensor q = q0.clone().set_requires_grad(true), k = k0.clone().set_requires_grad(true),
                   g = g0.clone().set_requires_grad(true);
  const at::Tensor G = g.cumsum(1);
  const at::Tensor A = kernel ? gated_diagonal_scores(q, k, G, g, c) : gated_diagonal_scores_reference(q, k, G, c);
  const at::Tensor loss = (A * test::randn(A.sizes().vec(), 5, A.scalar_type())).sum();
  auto grads = torch::autograd::grad({loss}, {q, k, g});
  grads.insert(grads.begin(), A.detach());
  return grads;
}

TEST(GatedDiagonal, CpuKernelMatchesPairwiseReferenceInFp64) {
  const Case s;
  const at::Tensor q = test::randn({s.M, s.Gq, s.C, s.K}, 1), k = test::randn({s.M, s.C, s.K}, 2),
                   g = test::log_decay({s.M, s.C, s.K}, 3);
  for (int64_t c : {1, 3, 4, 12}) {
    const auto got = scores_and_grads(true, q, k, g, c), want = scores_and_grads(false, q, k, g, c);
    EXPECT_EQ(got[0].sizes(), at::IntArrayRef({s.M, s.C / c, s.Gq, c, c}));
    for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(max_rel_diff(got[i], want[i]), 1e-12) << "c " << c << " #" << i;
  }
}

// Log gates of -20 per step on half the channels: exp(G_i - G_j) reaches e^-300 inside a 16-row block, so
// splitting it into exp(G_i - ref) exp(ref - G_j) would overflow fp32; products of per-step decays do not.
TEST(GatedDiagonal, StrongDecayStaysFiniteAndExact) {
  const Case s{2, 1, 32, 16};
  const at::Tensor strong = at::where(at::arange(s.K) % 2 == 0, -20.0, -0.01).to(at::kDouble);
  const at::Tensor g = strong.expand({s.M, s.C, s.K}).contiguous();
  const at::Tensor q = test::randn({s.M, s.Gq, s.C, s.K}, 4), k = test::randn({s.M, s.C, s.K}, 5);
  const auto want = scores_and_grads(false, q, k, g, 16);
  const auto fp64 = scores_and_grads(true, q, k, g, 16);
  const auto fp32 = scores_and_grads(true, q.to(at::kFloat), k.to(at::kFloat), g.to(at::kFloat), 16);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_LE(max_rel_diff(fp64[i], want[i]), 1e-12) << "#" << i;
    EXPECT_TRUE(fp32[i].isfinite().all().item<bool>()) << "#" << i;
    EXPECT_LE(max_rel_diff(fp32[i], want[i]), 1e-5) << "#" << i;
  }
}

}  // namespace
}  // namespace linearize::kernels::detail
