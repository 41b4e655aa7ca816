// decode_attention_parts (one query per head against a cache) against the textbook formula in fp64, on the
// strided views a KV cache hands it, for fp64 / fp32 / bf16 / fp16 caches with grouped query heads; and
// softmax_attention's decode through it against SDPA on the same inputs.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "kernels/decode_attention.h"
#include "kernels/softmax_attention.h"

namespace linearize::kernels {
namespace {

constexpr std::int64_t B = 2, Hkv = 2, G = 3, D = 20, V = 12;  // D, V not multiples of the 16 lanes: tails run

// softmax(scale q k^T) v in fp64 with repeated kv heads: [B, H, D] x [B, Hkv, S, *] -> [B, H, V].
at::Tensor formula(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const auto kr = k.to(at::kDouble).repeat_interleave(G, 1), vr = v.to(at::kDouble).repeat_interleave(G, 1);
  const auto w = at::softmax(at::matmul(q.to(at::kDouble).unsqueeze(2), kr.transpose(-1, -2)) * scale, -1);
  return at::matmul(w, vr).squeeze(2);
}

// A cache buffer of capacity 40 holding S keys, as KvCache's narrow view: strides that are not the sizes'.
std::pair<at::Tensor, at::Tensor> cache_view(std::int64_t S, at::ScalarType dtype) {
  const auto k = at::randn({B, Hkv, 40, D}, at::kDouble).to(dtype), v = at::randn({B, Hkv, 40, V}, at::kDouble).to(dtype);
  return {k.narrow(2, 3, S), v.narrow(2, 3, S)};
}

TEST(DecodeAttention, EqualsTheFormulaInFp64OnACacheView) {
  at::manual_seed(11);
  for (const std::int64_t S : {1, 7, 33}) {
    const auto [k, v] = cache_view(S, at::kDouble);
    const auto q = at::randn({B, Hkv * G, D}, at::kDouble);
    ASSERT_TRUE(decode_attention_applies(q, k, v));
    const auto parts = decode_attention_parts(q, k, v, 0.3);
    // fp64 both ways, the same terms in another order: ~1e-16 per op.
    EXPECT_LE((parts.numerator / parts.denominator.unsqueeze(-1) - formula(q, k, v, 0.3)).abs().max().item<double>(), 1e-12)
        << "S " << S;
    EXPECT_GE(parts.denominator.min().item<double>(), 1.0);  // the row max contributes exp(0) = 1
  }
}

TEST(DecodeAttention, NarrowCachesAccumulateInFp32WithinTheirBound) {
  at::manual_seed(12);
  const std::int64_t S = 33;
  const double scale = 1.0 / std::sqrt(double(D)), u = std::ldexp(1.0, -24);
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(std::string(c10::toString(dtype)));
    const auto [k, v] = cache_view(S, dtype);
    const auto q = at::randn({B, Hkv * G, D});
    const auto parts = decode_attention_parts(q, k, v, scale);
    ASSERT_EQ(parts.numerator.scalar_type(), at::kFloat);
    // The oracle reads the same rounded cache in fp64, so only the loop's fp32 arithmetic differs: each score
    // carries at most ds = D u scale max sum_i |q_i k_i| (fp32 dot), each weight exp(s - c) then a relative
    // 2 ds + u, and the weighted sums over S keys (S + 2) u more; the output moves by at most that times
    // max |v|. Doubled for the exp's own rounding. A wrong widening or a skipped tail moves it by O(1).
    const auto magnitude = at::matmul(q.abs().to(at::kDouble).unsqueeze(2),
                                      k.to(at::kDouble).abs().repeat_interleave(G, 1).transpose(-1, -2)).max().item<double>();
    const double ds = D * u * scale * magnitude;
    const double allowed = 2 * (2 * ds + (S + 3) * u) * v.to(at::kDouble).abs().max().item<double>();
    const auto got = (parts.numerator / parts.denominator.unsqueeze(-1)).to(at::kDouble);
    EXPECT_LE((got - formula(q, k, v, scale)).abs().max().item<double>(), allowed);
  }
}

TEST(DecodeAttention, SoftmaxAttentionDecodeEqualsSdpa) {
  at::manual_seed(13);
  const std::int64_t S = 30;
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    const auto [k, v] = cache_view(S, dtype);
    const auto kv = k.narrow(3, 0, V).contiguous(), vv = v;  // SDPA wants one head size for k and v here
    const auto q = at::randn({B, Hkv * G, 1, V}).to(dtype);
    for (const std::optional<std::int64_t> window : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{8}}) {
      SoftmaxAttentionOptions o;
      o.query_start = 100;
      o.key_start = 100 - S + 1;  // the keys end with the query
      o.window = window;
      const auto got = softmax_attention(q, kv, vv, o);  // the fused loop
      const auto first = window ? S - *window : 0;
      const auto expected = formula(q.squeeze(2), kv.narrow(2, first, S - first), vv.narrow(2, first, S - first),
                                    1.0 / std::sqrt(double(V)));
      ASSERT_EQ(got.scalar_type(), dtype);
      ASSERT_EQ(got.sizes(), (at::IntArrayRef{B, Hkv * G, 1, V}));
      // fp32 arithmetic, then one rounding to the output dtype: 2^-24 resp. 2^-8 relative on |o| <= max |v|
      // (~4.5); 1e-5 covers the fp32 arithmetic (bound of the test above, ~2e-6 here).
      const double tolerance = (dtype == at::kFloat ? 1e-5 : 4.5 * std::ldexp(1.0, -8) + 1e-5);
      EXPECT_LE((got.squeeze(2).to(at::kDouble) - expected).abs().max().item<double>(), tolerance)
          << c10::toString(dtype) << (window ? " window" : "");
    }
  }
}

TEST(DecodeAttention, AutogradInputsTakeTheDifferentiableForm) {
  at::manual_seed(14);
  const auto [k, v] = cache_view(9, at::kFloat);
  const auto q = at::randn({B, Hkv * G, D}).requires_grad_();
  EXPECT_FALSE(decode_attention_applies(q, k, v));
  {
    at::AutoGradMode no_grad(false);
    EXPECT_TRUE(decode_attention_applies(q, k, v));
  }
  EXPECT_FALSE(decode_attention_applies(q.detach().to(at::kDouble), k, v));  // fp64 query, fp32 cache
  EXPECT_FALSE(decode_attention_applies(q.detach(), k, v.to(at::kBFloat16)));
}

}  // namespace
}  // namespace linearize::kernels
