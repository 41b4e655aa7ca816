// kernels::linear: the matrix-vector loop for bf16 / fp16 weights (decode) against an fp64 reference on the
// same weights, for 1 to 4 rows, an input length that is not a multiple of the loop's 16 lanes and a bias;
// and the paths it leaves to at::linear (more rows, fp32 weights, autograd) exactly at::linear's.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/linear.h"

namespace linearize::kernels {
namespace {

// bf16 rows of even length at a 4-byte-aligned address are read as word pairs; an odd length or a
// misaligned view takes the element loop. Both on 1 and 2 threads (300 output rows: two tasks).
TEST(Linear, HalfWeightsAgreeWithFp64ForDecodeRows) {
  at::manual_seed(0);
  const int threads = at::get_num_threads();
  struct Case {
    int64_t in;
    bool misaligned;
  };
  // 1000 = 62 x 16 + 8 elements and 500 = 31 x 16 + 4 pairs: the tail loops run too.
  for (const auto [in, misaligned] : {Case{1000, false}, Case{999, false}, Case{1000, true}}) {
    for (const auto dtype : {at::kBFloat16, at::kHalf}) {
      for (const int n_threads : {1, 2}) {
        at::set_num_threads(n_threads);
        for (int64_t rows = 1; rows <= kMatVecMaxRows; ++rows) {
          SCOPED_TRACE(std::string(dtype == at::kBFloat16 ? "bf16" : "fp16") + ", in " + std::to_string(in) +
                       (misaligned ? " misaligned" : "") + ", threads " + std::to_string(n_threads) + ", rows " +
                       std::to_string(rows));
          const int64_t out = 300;
          // A weight at an offset of one element: 2 bytes past an aligned address.
          const auto storage = at::randn({out * in + 1}).to(dtype);
          const auto w = storage.narrow(0, misaligned ? 1 : 0, out * in).view({out, in});
          const auto b = at::randn({out}).to(dtype), x = at::randn({rows, 1, in}).to(dtype);
          const auto got = linear_projection(x, w, b);
          ASSERT_EQ(got.sizes(), (at::IntArrayRef{rows, 1, out}));
          ASSERT_EQ(got.scalar_type(), dtype);
          const auto exact = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble));
          // The loop sums in fp32 (error <= n u32 sum|x w|, n = 1000: ~6e-5 of sum|x w|), then the result is
          // rounded once to the weights' dtype (unit roundoff u: 2^-8 relative in bf16, 2^-11 in fp16). A wrong
          // widening, a swapped pair or a skipped tail moves the result by whole products, far beyond this.
          const double u = dtype == at::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
          const auto magnitude = at::linear(x.to(at::kDouble).abs(), w.to(at::kDouble).abs(), b.to(at::kDouble).abs());
          const auto allowed = exact.abs() * u + magnitude * (1000 * std::ldexp(1.0, -24));
          EXPECT_TRUE(((got.to(at::kDouble) - exact).abs() <= allowed).all().item<bool>())
              << "worst " << ((got.to(at::kDouble) - exact).abs() - allowed).max().item<double>();
        }
      }
    }
  }
  at::set_num_threads(threads);
}

// Every finite bf16 and fp16 weight (subnormals and both zeros included) widens exactly: one-hot rows of x
// pick each column of a [2048, 32] matrix holding all 65536 bit patterns (32 columns: whole vector steps of
// the word-pair loop), aligned and one element off (the element loop), and each output is that weight (one
// product with 1, the rest with 0) rounded back to its own dtype: bit for bit, but for -0 + 0 = +0.
TEST(Linear, EveryFiniteHalfWeightWidensExactly) {
  constexpr int64_t kColumns = 32;
  for (const auto dtype : {at::kBFloat16, at::kHalf}) {
    for (const bool misaligned : {false, true}) {
      SCOPED_TRACE(std::string(dtype == at::kBFloat16 ? "bf16" : "fp16") + (misaligned ? ", misaligned" : ""));
      const auto patterns = at::arange(65536, at::kInt).to(at::kShort).view(dtype);
      const auto finite = patterns.masked_fill(at::isfinite(patterns.to(at::kFloat)).logical_not(), 0);
      const auto storage = at::cat({finite.narrow(0, 0, 1), finite});
      const auto w = storage.narrow(0, misaligned ? 1 : 0, 65536).view({65536 / kColumns, kColumns});
      for (int64_t first = 0; first < kColumns; first += kMatVecMaxRows) {
        const auto x = at::eye(kColumns, at::kFloat).narrow(0, first, kMatVecMaxRows).to(dtype);
        const auto y = linear_projection(x, w);
        EXPECT_TRUE(at::equal(y.to(at::kFloat), w.narrow(1, first, kMatVecMaxRows).t().to(at::kFloat))) << "columns " << first << "..";
      }
    }
  }
}

TEST(Linear, OtherCasesAreAtLinear) {
  at::manual_seed(1);
  const auto w = at::randn({64, 96}).to(at::kBFloat16), x = at::randn({kMatVecMaxRows + 1, 96}).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(linear_projection(x, w), at::linear(x, w)));  // prefill rows: oneDNN's GEMM
  const auto w32 = at::randn({64, 96}), x32 = at::randn({1, 96});
  EXPECT_TRUE(at::equal(linear_projection(x32, w32), at::linear(x32, w32)));
  const auto trained = at::randn({64, 96}).to(at::kBFloat16).requires_grad_(true);
  const auto y = linear_projection(x.narrow(0, 0, 1), trained);
  EXPECT_TRUE(y.requires_grad());  // autograd keeps at::linear's graph
}

}  // namespace
}  // namespace linearize::kernels
