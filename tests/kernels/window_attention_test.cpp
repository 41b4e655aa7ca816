// window_softmax_parts against the full-matrix windowed softmax attention in fp64: numerator / denominator
// must be the attention output, with and without a cache in front of the queries, and with grouped heads.
#include <gtest/gtest.h>

#include "kernels/softmax_attention.h"
#include "kernels/window_attention.h"

namespace linearize::kernels {
namespace {

struct Case {
  const char* label;
  std::int64_t queries, cached, window;  // keys = cached + queries, the cache just before the queries
};

class WindowParts : public testing::TestWithParam<Case> {};

TEST_P(WindowParts, NumeratorOverDenominatorIsWindowedSoftmaxAttention) {
  const auto& c = GetParam();
  at::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const std::int64_t S = c.cached + c.queries, start = 40;  // queries at absolute positions 40..
  const auto q = at::randn({2, c.queries, 4, 8}, opts);       // [B, T, H, D], H = 2 x Hkv
  const auto k = at::randn({2, S, 2, 8}, opts), v = at::randn({2, S, 2, 8}, opts);
  SoftmaxAttentionOptions o;
  o.query_start = start;
  o.key_start = start - c.cached;
  o.window = c.window;
  const auto expected = softmax_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), o).transpose(1, 2);
  // One query per block (decode), blocks of 5, of the window, and one block of all queries.
  for (const std::int64_t block : {std::int64_t{1}, std::int64_t{5}, c.window, c.queries}) {
    const auto parts = window_softmax_parts(q, k, v, start, start - c.cached, c.window, 1.0 / std::sqrt(8.0), block);
    // fp64 both ways, the same terms summed in another order: ~1e-16 per op.
    EXPECT_LE((parts.numerator / parts.denominator.unsqueeze(-1) - expected).abs().max().item<double>(), 1e-12)
        << "block " << block;
    // Every exponent is s - c_n <= 0 and the row's own maximum contributes exp(0) = 1.
    EXPECT_GE(parts.denominator.min().item<double>(), 1.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WindowParts,
    testing::Values(Case{"NoCacheSeveralBlocks", 37, 0, 8}, Case{"CacheOfExactlyTheWindow", 20, 8, 8},
                    Case{"DecodeOneTokenOnTheCache", 1, 8, 8}, Case{"WindowLongerThanTheSequence", 12, 3, 64}),
    [](const testing::TestParamInfo<Case>& param) { return std::string(param.param.label); });

}  // namespace
}  // namespace linearize::kernels
