// The fused CPU pass for chunked GLA's per-chunk terms against its ATen oracle (exps of cumsums): every term
// in fp64, grouped query heads, K not a multiple of the vector width, every sub-chunk size that divides the
// chunk, and gates strong enough to underflow. (Gradients run through the reference; linear_attention_test
// checks them against the parallel form and finite differences.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "kernels/gla_chunk_terms.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels::detail {
namespace {

using test::max_rel_diff;

// The six terms: from gla_chunk_terms without autograd (the fused CPU pass) or from the reference.
std::vector<at::Tensor> terms(bool fused, const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c) {
  const at::AutoGradMode no_grad(false);
  const auto t = fused ? gla_chunk_terms(q, k, g, c) : gla_chunk_terms_reference(q, k, g, c);
  return {t.qdecayed, t.kdecayed, t.decay, t.qsub, t.keys, t.diagonal};
}

// fp64: the fused pass multiplies per-step decays where the oracle takes exps of cumsums, so the two differ
// by rounding only (~1e-15 relative); 1e-12 leaves room for C = 12 products and sums over K = 37.
TEST(GlaChunkTerms, FusedPassMatchesReferenceInFp64) {
  const int64_t M = 3, Gq = 2, C = 12, K = 37;
  const at::Tensor q = test::randn({M, Gq, C, K}, 1), k = test::randn({M, C, K}, 2), g = test::log_decay({M, C, K}, 3);
  for (int64_t c : {1, 3, 4, 12}) {
    const auto got = terms(true, q, k, g, c), want = terms(false, q, k, g, c);
    EXPECT_EQ(got[3].sizes(), at::IntArrayRef({M, C / c, Gq, c, K}));
    EXPECT_EQ(got[4].size(1), c * (C / c) * (C / c - 1) / 2);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].sizes(), want[i].sizes()) << "c " << c << " #" << i;
      if (got[i].numel() == 0) continue;  // keys, with one sub-chunk per chunk
      EXPECT_LE(max_rel_diff(got[i], want[i]), 1e-12) << "c " << c << " #" << i;
    }
  }
}

// The terms by their definitions at single entries, so that the oracle itself is pinned: chunk 1, head 1,
// sub-chunks of 4 in a chunk of 12.
TEST(GlaChunkTerms, TermsAreTheirDefiningDecays) {
  const int64_t M = 2, Gq = 2, C = 12, K = 5, c = 4;
  const at::Tensor q = test::randn({M, Gq, C, K}, 4), k = test::randn({M, C, K}, 5), g = test::log_decay({M, C, K}, 6);
  const at::AutoGradMode no_grad(false);
  const auto t = gla_chunk_terms(q, k, g, c);
  const at::Tensor G = g.cumsum(1);
  const auto e = [&](int64_t i, int64_t ch) { return G[1][i][ch].item<double>(); };
  const int64_t ch = 3;
  EXPECT_NEAR(t.qdecayed[1][1][7][ch].item<double>(), q[1][1][7][ch].item<double>() * std::exp(e(7, ch)), 1e-14);
  EXPECT_NEAR(t.kdecayed[1][2][ch].item<double>(), k[1][2][ch].item<double>() * std::exp(e(11, ch) - e(2, ch)), 1e-14);
  EXPECT_NEAR(t.decay[1][ch].item<double>(), std::exp(e(11, ch)), 1e-14);
  // row 10 is row 2 of sub-chunk 2, whose first row is 8
  EXPECT_NEAR(t.qsub[1][2][1][2][ch].item<double>(), q[1][1][10][ch].item<double>() * std::exp(e(10, ch) - e(8, ch)),
              1e-14);
  // sub-chunk 2's keys start at row c * 2 * 1 / 2 = 4 of the packed block; its key 5 is k_5 exp(G_8 - G_5)
  EXPECT_NEAR(t.keys[1][4 + 5][ch].item<double>(), k[1][5][ch].item<double>() * std::exp(e(8, ch) - e(5, ch)), 1e-14);
  double a = 0;  // diagonal block of sub-chunk 1 (rows 4..7), query row 6, key row 5
  for (int64_t x = 0; x < K; ++x) a += q[1][1][6][x].item<double>() * k[1][5][x].item<double>() * std::exp(e(6, x) - e(5, x));
  EXPECT_NEAR(t.diagonal[1][1][1][2][1].item<double>(), a, 1e-13);
}

// Log gates of -20 per step on half the channels: exp(G) reaches e^-1280 across a chunk of 64, far below
// fp32's range; the fp32 pass must give the underflowed (zero) factors, not inf or NaN. 1e-5: products of up
// to 64 fp32 decays carry ~64 roundings of 6e-8 each.
TEST(GlaChunkTerms, StrongDecayUnderflowsToZeroInFp32) {
  const int64_t M = 2, Gq = 1, C = 64, K = 16, c = 16;
  const at::Tensor strong = at::where(at::arange(K) % 2 == 0, -20.0, -0.01).to(at::kDouble);
  const at::Tensor g = strong.expand({M, C, K}).contiguous();
  const at::Tensor q = test::randn({M, Gq, C, K}, 7), k = test::randn({M, C, K}, 8);
  const auto want = terms(false, q, k, g, c);
  const auto fp32 = terms(true, q.to(at::kFloat), k.to(at::kFloat), g.to(at::kFloat), c);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(fp32[i].isfinite().all().item<bool>()) << "#" << i;
    EXPECT_LE(max_rel_diff(fp32[i], want[i]), 1e-5) << "#" << i;
  }
}

}  // namespace
}  // namespace linearize::kernels::detail
