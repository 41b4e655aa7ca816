// softmax_attention against the textbook formula in fp64: softmax(q k^T / sqrt(d) + mask) v with each
// query head reading kv head h / groups, for plain causal, windowed, offset (KV cache) and trimmed caches, with and
// without attention sinks (gpt-oss: exp(sink_h) joins each row's denominator).
#include <gtest/gtest.h>

#include <cmath>
#include <utility>

#include "kernels/norms.h"
#include "kernels/softmax_attention.h"

namespace linearize::kernels {
namespace {

// Loops, no fused kernels, no masks built the same way: an independent oracle.
at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::int64_t query_start,
                           std::int64_t key_start, std::optional<std::int64_t> window, const at::Tensor& sinks = {}) {
  const std::int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2), groups = H / k.size(1);
  auto out = at::zeros_like(q);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t qpos = query_start + t;
        std::vector<at::Tensor> scores;
        std::vector<std::int64_t> visible;
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int64_t kpos = key_start + s;
          if (kpos > qpos || (window && qpos - kpos >= *window)) continue;
          visible.push_back(s);
          scores.push_back((q[b][h][t] * k[b][h / groups][s]).sum() / std::sqrt(static_cast<double>(q.size(3))));
        }
        if (sinks.defined()) scores.push_back(sinks[h]);  // the sink's logit: in the softmax, then dropped
        const auto weights = at::softmax(at::stack(scores), 0);
        for (std::size_t j = 0; j < visible.size(); ++j) out[b][h][t] += weights[static_cast<std::int64_t>(j)] * v[b][h / groups][visible[j]];
      }
  return out;
}

struct Case {
  const char* label;
  std::int64_t T, S, query_start, key_start;
  std::optional<std::int64_t> window;
  bool sinks = false;
};

class SoftmaxAttention : public testing::TestWithParam<Case> {};

TEST_P(SoftmaxAttention, EqualsTheFormulaInFp64) {
  const auto& c = GetParam();
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto q = at::randn({2, 4, c.T, 8}, opts), k = at::randn({2, 2, c.S, 8}, opts), v = at::randn({2, 2, c.S, 8}, opts);
  SoftmaxAttentionOptions o;
  o.query_start = c.query_start;
  o.key_start = c.key_start;
  o.window = c.window;
  // Sinks of either sign and a large one (a head that mostly attends to nothing).
  if (c.sinks) o.sinks = at::tensor({-1.5, 0.0, 0.7, 3.0}, opts);
  const auto got = softmax_attention(q, k, v, o);
  // fp64 throughout: only summation order differs, ~1e-16 per op.
  EXPECT_LE((got - naive_attention(q, k, v, c.query_start, c.key_start, c.window, o.sinks)).abs().max().item<double>(), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(
    Masks, SoftmaxAttention,
    testing::Values(Case{"PlainCausal", 9, 9, 0, 0, std::nullopt}, Case{"Window", 12, 12, 0, 0, 4},
                    Case{"DecodeOneTokenAfterCache", 1, 10, 9, 0, std::nullopt},
                    Case{"ChunkAfterCache", 3, 10, 7, 0, std::nullopt},
                    Case{"WindowedDecodeOnTrimmedCache", 1, 4, 20, 17, 4},
                    Case{"WindowedChunkOnTrimmedCache", 5, 8, 20, 17, 4},
                    Case{"SinksPlainCausal", 9, 9, 0, 0, std::nullopt, true},
                    Case{"SinksWindow", 12, 12, 0, 0, 4, true},
                    Case{"SinksDecodeOneTokenAfterCache", 1, 10, 9, 0, std::nullopt, true},
                    Case{"SinksWindowedChunkOnTrimmedCache", 5, 8, 20, 17, 4, true}),
    [](const testing::TestParamInfo<Case>& param) { return std::string(param.param.label); });

// With sinks the mask is per head, so queries go in blocks of ~16M mask elements, each against the keys it can see. The
// oracle is the formula in one piece (fp64): softmax over [scores | sink], the sink's column dropped.
at::Tensor sinks_in_one_piece(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& visible,
                              const at::Tensor& sinks) {
  const auto H = q.size(1), G = H / k.size(1);
  const auto scores = at::matmul(q, k.repeat_interleave(G, 1).transpose(-1, -2)) / std::sqrt(double(q.size(3)));
  const auto masked = scores.masked_fill(visible.logical_not(), -INFINITY);
  const auto sink = sinks.view({1, H, 1, 1}).expand({q.size(0), H, q.size(2), 1});
  return at::matmul(at::softmax(at::cat({masked, sink}, -1), -1).narrow(-1, 0, k.size(2)), v.repeat_interleave(G, 1));
}

// A full layer's chunk after a cache: 64 heads over 4096 keys give blocks of 63 rows, 150 queries three blocks (the last
// partial), all views of one copy of the keys.
TEST(SoftmaxAttentionSinks, FullLayerQueryBlocksEqualOnePiece) {
  at::manual_seed(11);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const std::int64_t H = 64, Hkv = 8, T = 150, S = 4096, D = 8;
  const auto q = at::randn({1, H, T, D}, opts), k = at::randn({1, Hkv, S, D}, opts), v = at::randn({1, Hkv, S, D}, opts);
  SoftmaxAttentionOptions o;
  o.query_start = S - T;
  o.sinks = at::randn({H}, opts);
  const auto qpos = at::arange(S - T, S, at::kLong).unsqueeze(1), kpos = at::arange(0, S, at::kLong).unsqueeze(0);
  EXPECT_LE((softmax_attention(q, k, v, o) - sinks_in_one_piece(q, k, v, kpos.le(qpos), o.sinks)).abs().max().item<double>(), 1e-12);
}

// A sliding layer's prefill of a left-padded batch: 2 x 16 heads, window 64, give blocks of 692 rows, so 1200 queries
// take two, the second against a copy of its window alone (keys from 629 on), its padding flags narrowed alike.
TEST(SoftmaxAttentionSinks, SlidingLayerBlocksSeeTheirWindowOnlyWithPadding) {
  at::manual_seed(12);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const std::int64_t B = 2, H = 16, Hkv = 4, T = 1200, D = 8, W = 64;
  const auto q = at::randn({B, H, T, D}, opts), k = at::randn({B, Hkv, T, D}, opts), v = at::randn({B, Hkv, T, D}, opts);
  SoftmaxAttentionOptions o;
  o.window = W;
  o.sinks = at::randn({H}, opts);
  o.key_valid = at::ones({B, T}, at::kBool);
  o.key_valid[1].narrow(0, 0, 50).fill_(false);  // row 1: 50 tokens of left padding
  const auto pos = at::arange(0, T, at::kLong);
  const auto qpos = pos.view({1, 1, T, 1}), kpos = pos.view({1, 1, 1, T});
  const auto visible = kpos.le(qpos).logical_and(kpos.gt(qpos - W)).logical_and(o.key_valid.view({B, 1, 1, T})).logical_or(kpos.eq(qpos));
  EXPECT_LE((softmax_attention(q, k, v, o) - sinks_in_one_piece(q, k, v, visible, o.sinks)).abs().max().item<double>(), 1e-12);
}

TEST(RmsNorm, NormalisesInFp32AndScales) {
  const auto x = at::randn({3, 16}, at::kDouble);
  const auto w = at::randn({16}, at::kDouble);
  const auto expected = w * x / (x.pow(2).mean(-1, true) + 1e-5).sqrt();
  // The statistics run in fp32 (as transformers does), so fp32 precision: ~1e-7 relative, 1e-5 allowed.
  EXPECT_TRUE(rms_norm(x, w, 1e-5).allclose(expected, 1e-5, 1e-5));
  // bf16 input: the normalised value is cast back to bf16 before the weight multiplies it.
  const auto xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16);
  const auto x32 = xb.to(at::kFloat);
  const auto ref = wb * (x32 / (x32.pow(2).mean(-1, true) + 1e-5).sqrt()).to(at::kBFloat16);
  EXPECT_TRUE(rms_norm(xb, wb, 1e-5).equal(ref));
  // OLMo 2's form: the product w * normalised in fp32, rounded once (Olmo2RMSNorm). It must differ from the Llama form
  // above on most bf16 elements (two roundings against one), or the test could not tell them apart.
  const auto wide_ref = (wb.to(at::kFloat) * (x32 / (x32.pow(2).mean(-1, true) + 1e-5).sqrt())).to(at::kBFloat16);
  EXPECT_TRUE(rms_norm_weight_in_fp32(xb, wb, 1e-5).equal(wide_ref));
  EXPECT_FALSE(wide_ref.equal(ref));
}

// The fused CPU loop (no autograd) against the ATen form (taken when x wants a gradient) on the same input:
// the same arithmetic in the same precision with the roundings in the same places, so they differ only by
// the order of the sum of squares (a few ulp of fp32 in the scale). fp32 / fp64: relative 1e-6 / 1e-14.
// bf16 / fp16: a value next to a rounding boundary may round the other way, one step of the dtype (at most
// 2^-7 / 2^-10 relative), and the normalised row's step passes through the weight's product before that
// rounds too: at most two steps, on a few elements. A rounding skipped or added (the normalised row not
// cast back before the weight, or Gemma's / OLMo's product cast twice) would move most elements.
TEST(RmsNorm, FusedLoopEqualsTheAtenForm) {
  at::manual_seed(5);
  const auto x64 = at::randn({37, 200}, at::kDouble) * 3, w64 = at::randn({200}, at::kDouble);
  const std::pair<const char*, decltype(&rms_norm)> forms[] = {
      {"w", rms_norm}, {"w in fp32", rms_norm_weight_in_fp32}, {"1 + w", rms_norm_one_plus}};
  for (const auto& [label, norm] : forms) {
    for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " " + label);
      const auto x = x64.to(dtype), w = w64.to(dtype);
      const auto fused = norm(x, w, 1e-6);
      const auto aten = norm(x.clone().requires_grad_(), w, 1e-6).detach();
      ASSERT_EQ(fused.scalar_type(), dtype);
      const auto gap = (fused.to(at::kDouble) - aten.to(at::kDouble)).abs() / aten.to(at::kDouble).abs().clamp_min(1e-3);
      const double step = dtype == at::kBFloat16 ? std::ldexp(1.0, -6) : dtype == at::kHalf ? std::ldexp(1.0, -9) : 0.0;
      const double tight = dtype == at::kDouble ? 1e-14 : 1e-6;
      EXPECT_LE(gap.max().item<double>(), step + tight);
      // Elements off by more than fp32 noise: rare boundary cases only (at most 2% of 7400).
      EXPECT_LE((gap > tight).sum().item<int64_t>(), 148);
    }
  }
}

}  // namespace
}  // namespace linearize::kernels
