// Activation checkpointing (kernels/checkpoint.h): the gradients through a checkpointed block equal the
// plain block's bit for bit (the same operations run on the same values), also when the block draws
// dropout masks (the generator is replayed); when its forward ran under bf16 autocast and the backward
// outside it, the recomputation runs in bf16 too (autocast is replayed); the block really runs again in
// the backward; the block's trainables get gradients even when its input requires none.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <utility>
#include <vector>

#include "kernels/checkpoint.h"

namespace linearize {
namespace {

struct Weights {
  at::Tensor w1 = at::randn({16, 32}).requires_grad_(true);
  at::Tensor w2 = at::randn({32, 16}).requires_grad_(true);
};

// dropout(x W1) -> tanh -> W2: a random draw and a nonlinearity whose backward reads saved values.
// `calls`: the dtype its first product ran in, per call.
at::Tensor block(const Weights& w, const at::Tensor& x, std::vector<at::ScalarType>& calls) {
  const auto h = at::matmul(x, w.w1);
  calls.push_back(h.scalar_type());
  return at::matmul(at::tanh(at::dropout(h, 0.5, /*train=*/true)), w.w2);
}

struct Grads {
  at::Tensor w1, w2, x, y;
};

// Two blocks in a row on x, then a loss; the gradients it leaves. `bf16`: the forward under CPU autocast.
Grads run(bool checkpoint, bool x_requires_grad, bool bf16, std::vector<at::ScalarType>& calls) {
  at::manual_seed(7);
  const Weights w;
  const auto x = at::randn({4, 16}).requires_grad_(x_requires_grad);
  at::manual_seed(11);  // the dropout masks of both runs start from the same state
  at::Tensor y;
  {
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, bf16);
    const kernels::Block b = [&w, &calls](const at::Tensor& in) { return block(w, in, calls); };
    y = checkpoint ? kernels::checkpointed(b, kernels::checkpointed(b, x)) : b(b(x));
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
  }
  y.to(at::kFloat).pow(2).sum().backward();
  return {w.w1.grad(), w.w2.grad(), x_requires_grad ? x.grad() : at::Tensor(), y.detach()};
}

TEST(ActivationCheckpoint, GradientsEqualThePlainBlocks) {
  for (const bool x_grad : {true, false}) {
    for (const bool bf16 : {false, true}) {
      std::vector<at::ScalarType> plain_calls, checkpoint_calls;
      const auto plain = run(false, x_grad, bf16, plain_calls);
      const auto ckpt = run(true, x_grad, bf16, checkpoint_calls);
      const std::string what = std::string("x requires grad ") + (x_grad ? "yes" : "no") + (bf16 ? ", bf16 autocast" : ", fp32");
      EXPECT_EQ(plain.y.scalar_type(), bf16 ? at::kBFloat16 : at::kFloat) << what;
      EXPECT_TRUE(at::equal(ckpt.y, plain.y)) << what;
      ASSERT_TRUE(ckpt.w1.defined() && ckpt.w2.defined()) << what << ": the trainables got no gradient";
      const std::vector<std::pair<at::Tensor, at::Tensor>> grads{{ckpt.w1, plain.w1}, {ckpt.w2, plain.w2}, {ckpt.x, plain.x}};
      for (const auto& [c, p] : grads) {
        if (!p.defined()) continue;
        // fp32: equal. bf16: the plain backward sums the two blocks' gradients of a weight in bf16 at the
        // weight's one cached cast; the recomputed blocks cast it anew each, and their gradients meet in
        // fp32. That is one bf16 rounding of the sum: 2^-9 of its magnitude (measured 1.3e-3 of the largest).
        if (bf16) EXPECT_LE((c - p).abs().max().item<double>(), std::pow(2.0, -8) * p.abs().max().item<double>()) << what;
        else EXPECT_TRUE(at::equal(c, p)) << what;
      }
      const auto dtype = bf16 ? at::kBFloat16 : at::kFloat;
      EXPECT_EQ(plain_calls, std::vector<at::ScalarType>(2, dtype)) << what;
      // Each block runs again in the backward, in the dtype its forward ran in.
      EXPECT_EQ(checkpoint_calls, std::vector<at::ScalarType>(4, dtype)) << what;
    }
  }
}

// The replay restores the generator afterwards: what draws next is what it would have been.
TEST(ActivationCheckpoint, TheGeneratorContinuesAsWithoutTheReplay) {
  std::vector<at::ScalarType> calls;
  run(false, true, false, calls);
  const auto after_plain = at::rand({8});
  run(true, true, false, calls);
  const auto after_checkpoint = at::rand({8});
  EXPECT_TRUE(at::equal(after_plain, after_checkpoint));
}

TEST(ActivationCheckpoint, WithoutGradModeItIsTheBlock) {
  const at::NoGradGuard no_grad;
  std::vector<at::ScalarType> calls;
  const Weights w;
  const auto y = kernels::checkpointed([&](const at::Tensor& in) { return block(w, in, calls); }, at::randn({2, 16}));
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(calls.size(), 1u);
}

}  // namespace
}  // namespace linearize
