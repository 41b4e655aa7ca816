// The sliding-window + linear hybrids (Liger, LoLCATs with maps per query head or per kv head): the
// parallel, chunked and recurrent forms agree (fp64 to 1e-10, fp32 to a stated tolerance) for every chunk
// size, for lengths shorter than the window and not a multiple of the chunk, from a zero or a carried state;
// split calls and token-by-token decode equal one call; grouped kv heads equal repeated ones; gradients
// agree across forms and match finite differences.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <string>

#include "kernels/feature_maps.h"
#include "kernels/hybrid_attention.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels {
namespace {

using test::max_rel_diff;

enum class Variant { liger, lolcats, lolcats_kv_maps };

std::string name(Variant v) {
  switch (v) {
    case Variant::liger: return "Liger";
    case Variant::lolcats: return "Lolcats";
    case Variant::lolcats_kv_maps: return "LolcatsKvHeadMaps";
  }
  return "?";
}

struct Shape {
  int64_t B = 2, T = 100, Hq = 4, Hkv = 2, D = 8, F = 6, V = 5, window = 24;
};

// Every differentiable input in a fixed order; the first `time_major(variant)` are [B, T, ...]:
//   liger  : q, k, v, phi_q [B,T,Hq,F], phi_k [B,T,Hkv,F], log_decay [B,T,Hkv,F]
//   lolcats: q, k, v, phi_q [B,T,Hq,F], map_k [Hf,D,F/2] (phi_k = Hedgehog), window_factor [Hq]
using Inputs = std::vector<at::Tensor>;

int64_t time_major(Variant variant) { return variant == Variant::liger ? 6 : 4; }

Inputs make_inputs(Variant variant, const Shape& s, at::ScalarType dtype, uint64_t seed) {
  Inputs x{test::randn({s.B, s.T, s.Hq, s.D}, seed, dtype), test::randn({s.B, s.T, s.Hkv, s.D}, seed + 1, dtype),
           test::randn({s.B, s.T, s.Hkv, s.V}, seed + 2, dtype),
           softmax_d(test::randn({s.B, s.T, s.Hq, s.F}, seed + 3, dtype))};  // positive features
  if (variant == Variant::liger) {
    x.push_back(softmax_d(test::randn({s.B, s.T, s.Hkv, s.F}, seed + 4, dtype)));
    x.push_back(test::log_decay({s.B, s.T, s.Hkv, s.F}, seed + 5, dtype));
  } else {
    const int64_t feature_heads = variant == Variant::lolcats ? s.Hq : s.Hkv;
    x.push_back(test::randn({feature_heads, s.D, s.F / 2}, seed + 4, dtype) * 0.5);
    x.push_back(test::randn({s.Hq}, seed + 5, dtype));
  }
  return x;
}

HybridAttentionOptions options(MixerForm form, const Shape& s, int64_t chunk = 64) {
  HybridAttentionOptions o;
  o.form = form;
  o.window = s.window;
  o.chunk_size = chunk;
  return o;
}

LigerAttentionInputs liger_inputs(const Inputs& x) { return {x[0], x[1], x[2], x[3], x[4], x[5]}; }

LolcatsAttentionInputs lolcats_inputs(const Inputs& x) {
  const auto map = x[4];
  const auto phi_k = [map](const at::Tensor& k) {
    return hedgehog(map.size(0) == k.size(2) ? k : k.repeat_interleave(map.size(0) / k.size(2), 2), map);
  };
  return {x[0], x[1], x[2], x[3], phi_k, x[5]};
}

HybridAttentionOutput run(Variant variant, const Inputs& x, const HybridState& st, const HybridAttentionOptions& opt) {
  if (variant == Variant::liger) return liger_attention(liger_inputs(x), st, opt);
  return lolcats_attention(lolcats_inputs(x), st, opt);
}

// The variant's fused decode step (in place on st).
at::Tensor decode_step(Variant variant, const Inputs& x, HybridState& st, int64_t window) {
  if (variant == Variant::liger) return liger_decode_step(liger_inputs(x), st, window);
  return lolcats_decode_step(lolcats_inputs(x), st, window);
}

Inputs slice(Variant variant, const Inputs& x, int64_t start, int64_t length) {
  Inputs out = x;
  for (int64_t i = 0; i < time_major(variant); ++i) out[i] = x[i].narrow(1, start, length);
  return out;
}

// The state after a 40-token prefix (its own inputs): a full window cache and a non-zero linear state.
HybridState prefix_state(Variant variant, Shape s, at::ScalarType dtype) {
  s.T = 40;
  return run(variant, make_inputs(variant, s, dtype, 50), {}, options(MixerForm::parallel, s)).state;
}

// Worst difference of output, linear state and window cache.
double diff(const HybridAttentionOutput& a, const HybridAttentionOutput& b) {
  double d = std::max(max_rel_diff(a.o, b.o), max_rel_diff(a.state.linear.kv, b.state.linear.kv));
  return std::max({d, max_rel_diff(a.state.k, b.state.k), max_rel_diff(a.state.v, b.state.v)});
}

HybridAttentionOutput joined(const std::vector<HybridAttentionOutput>& parts) {
  std::vector<at::Tensor> os;
  for (const auto& p : parts) os.push_back(p.o);
  return {at::cat(os, 1), parts.back().state};
}

class HybridMixer : public ::testing::TestWithParam<Variant> {};

// fp64, from a zero and from a carried state, T = 100 (a multiple of no chunk), 17 (shorter than the
// window of 24) and 1: the recurrent form and every chunk size match the parallel form.
TEST_P(HybridMixer, FormsAgreeInFp64ForEveryChunkSize) {
  const Variant variant = GetParam();
  for (const bool carried : {false, true}) {
    for (const int64_t T : {100, 17, 1}) {
      Shape s;
      s.T = T;
      const auto x = make_inputs(variant, s, at::kDouble, 1);
      const auto st = carried ? prefix_state(variant, s, at::kDouble) : HybridState{};
      const auto reference = run(variant, x, st, options(MixerForm::parallel, s));
      const std::string label = "T " + std::to_string(T) + (carried ? " carried" : " zero");
      EXPECT_LE(diff(run(variant, x, st, options(MixerForm::recurrent, s)), reference), 1e-10) << label;
      for (const int64_t chunk : {16, 32, 64, 128}) {
        EXPECT_LE(diff(run(variant, x, st, options(MixerForm::chunked, s, chunk)), reference), 1e-10)
            << label << " chunk " << chunk;
      }
    }
  }
}

// fp32 against the fp64 oracle. The window branch is a softmax over 24 keys (weights within a few fp32
// ulps, 6e-8 each); the linear branch sums up to ~T * F = 600 products of O(1) terms, the sqrt(n) * eps
// bound being ~1.5e-6 (the same budget as linear_attention_test's 5e-6 for 1600 terms). LoLCATs divides
// by f * den + lin_den >= sigmoid(w) ~ 0.1..0.9, which adds at most a few ulps relative. Measured:
// <= 6e-7 for every variant and form (output, state and cache); 2e-6 leaves a 3x margin, while a wrong
// mask, shift, scale or state hand-over is off by 1e-2 or more.
TEST_P(HybridMixer, Fp32MatchesFp64WithinStatedTolerance) {
  const Variant variant = GetParam();
  const Shape s;
  const auto reference =
      run(variant, make_inputs(variant, s, at::kDouble, 1), prefix_state(variant, s, at::kDouble), options(MixerForm::parallel, s));
  const auto x = make_inputs(variant, s, at::kFloat, 1);
  const auto st = prefix_state(variant, s, at::kFloat);
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto got = run(variant, x, st, options(form, s));
    EXPECT_EQ(got.o.scalar_type(), at::kFloat);
    EXPECT_EQ(got.state.linear.kv.scalar_type(), at::kFloat);
    EXPECT_LE(diff(got, reference), 2e-6) << to_string(form);
  }
}

// Two calls with the carried state equal one call in every form; chunked prefill then recurrent decode
// steps equal one call, with a prompt longer and one shorter than the window, and decoding every token
// from the start does too. The cache holds exactly `window` keys once that many were seen.
TEST_P(HybridMixer, CarriedStateEqualsOneCall) {
  const Variant variant = GetParam();
  const Shape s;
  const auto x = make_inputs(variant, s, at::kDouble, 1);
  const auto whole = run(variant, x, {}, options(MixerForm::parallel, s));
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto first = run(variant, slice(variant, x, 0, 37), {}, options(form, s, 16));
    const auto second = run(variant, slice(variant, x, 37, s.T - 37), first.state, options(form, s, 16));
    EXPECT_LE(diff(joined({first, second}), whole), 1e-10) << to_string(form);
  }
  for (const int64_t prompt : {90, 10, 0}) {
    std::vector<HybridAttentionOutput> parts;
    HybridState st;
    if (prompt > 0) {
      parts.push_back(run(variant, slice(variant, x, 0, prompt), {}, options(MixerForm::chunked, s, 16)));
      st = parts.back().state;
      EXPECT_EQ(st.k.size(1), std::min(prompt, s.window));
    }
    for (int64_t t = prompt; t < s.T; ++t) {
      parts.push_back(run(variant, slice(variant, x, t, 1), st, options(MixerForm::recurrent, s)));
      st = parts.back().state;
      EXPECT_EQ(st.k.size(1), std::min(t + 1, s.window));
    }
    EXPECT_LE(diff(joined(parts), whole), 1e-10) << "prompt " << prompt;
    EXPECT_EQ(st.bytes() - st.linear.bytes(), s.B * s.window * s.Hkv * (s.D + s.V) * 8) << "window keys, kv heads";
  }
}

// Grouped kv heads give what repeating k, v (and Liger's features and gates, or LoLCATs' per-kv-head maps)
// per query head gives; the cache stays per kv head, and so does the linear state where the features are.
TEST_P(HybridMixer, GroupedKvHeadsEqualRepeatedHeads) {
  const Variant variant = GetParam();
  const Shape s;
  const int64_t G = s.Hq / s.Hkv;
  const auto x = make_inputs(variant, s, at::kDouble, 1);
  auto repeated = x;
  for (const int64_t i : {1, 2}) repeated[i] = x[i].repeat_interleave(G, 2);
  if (variant == Variant::liger) {
    for (const int64_t i : {4, 5}) repeated[i] = x[i].repeat_interleave(G, 2);
  } else if (variant == Variant::lolcats_kv_maps) {
    repeated[4] = x[4].repeat_interleave(G, 0);
  }
  const auto grouped = run(variant, x, {}, options(MixerForm::chunked, s));
  const auto full = run(variant, repeated, {}, options(MixerForm::parallel, s));
  EXPECT_LE(max_rel_diff(grouped.o, full.o), 1e-10);
  EXPECT_EQ(grouped.state.k.size(2), s.Hkv);
  EXPECT_EQ(grouped.state.linear.kv.size(1), variant == Variant::lolcats ? s.Hq : s.Hkv);
  EXPECT_LE(max_rel_diff(grouped.state.k, full.state.k.view({s.B, s.window, s.Hkv, G, s.D}).select(3, 0)), 1e-10);
}

// The inputs and an initial state (linear state, cache keys, cache values) as fp64 leaves, and a scalar
// loss of output, linear state and cache with random weights (no gradient trivially symmetric).
std::vector<at::Tensor> leaves_of(const Inputs& x, const HybridState& st) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : x) leaves.push_back(t.detach().clone().set_requires_grad(true));
  for (const auto& t : {st.linear.kv, st.k, st.v}) leaves.push_back(t.detach().clone().set_requires_grad(true));
  return leaves;
}

at::Tensor loss_of(Variant variant, const std::vector<at::Tensor>& leaves, const HybridAttentionOptions& opt) {
  const size_t n = leaves.size();
  const Inputs x(leaves.begin(), leaves.end() - 3);
  const auto out = run(variant, x, {{leaves[n - 3], {}}, leaves[n - 2], leaves[n - 1]}, opt);
  at::Tensor loss = (out.o * test::randn(out.o.sizes().vec(), 11)).sum();
  uint64_t seed = 12;
  for (const auto& t : {out.state.linear.kv, out.state.k, out.state.v}) loss = loss + (t * test::randn(t.sizes().vec(), seed++)).sum();
  return loss;
}

TEST_P(HybridMixer, ChunkedAndRecurrentGradientsEqualParallelGradients) {
  const Variant variant = GetParam();
  Shape s;
  s.T = 45, s.window = 12;
  const auto x = make_inputs(variant, s, at::kDouble, 1);
  const auto st = prefix_state(variant, s, at::kDouble);
  auto grads = [&](MixerForm form) {
    const auto leaves = leaves_of(x, st);
    return torch::autograd::grad({loss_of(variant, leaves, options(form, s, 16))}, leaves);
  };
  const auto reference = grads(MixerForm::parallel);
  for (auto form : {MixerForm::chunked, MixerForm::recurrent}) {
    const auto got = grads(form);
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_LE(max_rel_diff(got[i], reference[i]), 1e-10) << to_string(form) << " input " << i;
  }
}

// Autograd of the chunked form against central differences (fp64, small shapes, carried state; step 1e-6
// gives truncation + rounding errors ~1e-9, a wrong gradient term is off by O(1)). For LoLCATs also the
// window factor alone, whose gradient the joint directions could mask.
TEST_P(HybridMixer, ChunkedGradientMatchesFiniteDifferences) {
  const Variant variant = GetParam();
  Shape s;
  s.B = 1, s.T = 11, s.Hq = 2, s.Hkv = 1, s.D = 4, s.F = 4, s.V = 3, s.window = 4;
  const auto x = make_inputs(variant, s, at::kDouble, 21);
  const auto leaves = leaves_of(x, prefix_state(variant, s, at::kDouble));
  const auto opt = options(MixerForm::chunked, s, 4);
  const auto loss = [&](const std::vector<at::Tensor>& l) { return loss_of(variant, l, opt); };
  EXPECT_LE(test::finite_difference_mismatch(loss, leaves, 6, 99), 1e-7);
  if (variant == Variant::liger) return;
  const auto factor_only = [&](const std::vector<at::Tensor>& w) {
    auto l = leaves;
    l[5] = w[0];
    return loss(l);
  };
  const std::vector<at::Tensor> factor{leaves[5]};
  EXPECT_GT(torch::autograd::grad({factor_only(factor)}, factor)[0].abs().max().item<double>(), 1e-3);
  EXPECT_LE(test::finite_difference_mismatch(factor_only, factor, 3, 7), 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Kernels, HybridMixer, ::testing::Values(Variant::liger, Variant::lolcats, Variant::lolcats_kv_maps),
                         [](const ::testing::TestParamInfo<Variant>& param) { return name(param.param); });

// A state that shares no storage with `s`: the fused decode steps write into their state.
HybridState deep_copy(const HybridState& s) {
  HybridState c = s;
  c.linear.kv = s.linear.kv.clone();
  c.k = s.k.clone();
  c.v = s.v.clone();
  return c;
}

class HybridDecodeStep : public ::testing::TestWithParam<Variant> {};

// The fused decode step against the recurrent form, fp64, 30 steps from a full window of 24 (the ring wraps
// once and a bit): outputs and states equal up to summation order (~1e-16 per op; LoLCATs' state only adds,
// Liger's decays < 1, so nothing grows); then a chunked call reads the ring in order.
TEST_P(HybridDecodeStep, EqualsTheRecurrentFormAsTheRingWraps) {
  const Variant variant = GetParam();
  const Shape s;
  const auto x = make_inputs(variant, s, at::kDouble, 7);
  HybridState reference = prefix_state(variant, s, at::kDouble), fused = deep_copy(reference);
  for (int64_t t = 0; t < 30; ++t) {
    const auto in = slice(variant, x, t, 1);
    const auto o = decode_step(variant, in, fused, s.window);
    ASSERT_TRUE(o.defined()) << "step " << t;
    auto expected = run(variant, in, reference, options(MixerForm::recurrent, s));
    EXPECT_LE(max_rel_diff(o, expected.o), 1e-12) << "step " << t;
    reference = expected.state;
  }
  EXPECT_EQ(fused.ring_start, 30 % s.window);
  EXPECT_LE(max_rel_diff(fused.linear.kv, reference.linear.kv), 1e-12);
  const auto rest = slice(variant, x, 30, 20);
  EXPECT_LE(diff(run(variant, rest, fused, options(MixerForm::chunked, s, 16)),
                 run(variant, rest, reference, options(MixerForm::chunked, s, 16))),
            1e-12);
}

// A bf16 model's step: q, k, v in bf16 (the cache too), features, maps and gates in fp32. Both paths widen
// the same bf16 values and compute in fp32 (differences ~1e-6 from the order of sums), then round the
// output to bf16, where the two may land one bf16 step apart (at most 2^-7 relative).
TEST_P(HybridDecodeStep, Bf16CacheMatchesTheRecurrentForm) {
  const Variant variant = GetParam();
  const Shape s;
  auto x = make_inputs(variant, s, at::kFloat, 8);
  for (int i = 0; i < 3; ++i) x[i] = x[i].to(at::kBFloat16);
  HybridState reference = run(variant, slice(variant, x, 0, 40), {}, options(MixerForm::chunked, s, 16)).state;
  ASSERT_EQ(reference.k.scalar_type(), at::kBFloat16);
  HybridState fused = deep_copy(reference);
  for (int64_t t = 40; t < 70; ++t) {
    const auto in = slice(variant, x, t, 1);
    const auto o = decode_step(variant, in, fused, s.window);
    ASSERT_TRUE(o.defined());
    ASSERT_EQ(o.scalar_type(), at::kBFloat16);
    auto expected = run(variant, in, reference, options(MixerForm::recurrent, s));
    EXPECT_LE(max_rel_diff(o, expected.o), std::ldexp(1.0, -7) + 1e-5) << "step " << t;
    reference = expected.state;
  }
  EXPECT_LE(max_rel_diff(fused.linear.kv, reference.linear.kv), 1e-5);
}

// What a step leaves to the kernel, returning an undefined tensor and the state untouched: a cache not yet
// full, more than one token, and inputs that want a gradient.
TEST_P(HybridDecodeStep, LeavesWhatItDoesNotTakeToTheKernel) {
  const Variant variant = GetParam();
  const Shape s;
  const auto x = make_inputs(variant, s, at::kDouble, 9);
  HybridState short_prefix = run(variant, slice(variant, x, 0, 10), {}, options(MixerForm::chunked, s)).state;
  const auto before = deep_copy(short_prefix);
  EXPECT_FALSE(decode_step(variant, slice(variant, x, 10, 1), short_prefix, s.window).defined());
  EXPECT_TRUE(short_prefix.linear.kv.equal(before.linear.kv) && short_prefix.k.equal(before.k) && short_prefix.v.equal(before.v));
  HybridState full = prefix_state(variant, s, at::kDouble);
  EXPECT_FALSE(decode_step(variant, slice(variant, x, 10, 2), full, s.window).defined());
  auto wants_grad = slice(variant, x, 10, 1);
  wants_grad[0] = wants_grad[0].detach().requires_grad_();
  EXPECT_FALSE(decode_step(variant, wants_grad, full, s.window).defined());
  EXPECT_EQ(full.ring_start, 0);
}

INSTANTIATE_TEST_SUITE_P(Kernels, HybridDecodeStep, ::testing::Values(Variant::liger, Variant::lolcats, Variant::lolcats_kv_maps),
                         [](const ::testing::TestParamInfo<Variant>& param) { return name(param.param); });

TEST(HybridMixerApi, RejectsInconsistentShapes) {
  const Shape s;
  auto x = make_inputs(Variant::lolcats, s, at::kFloat, 1);
  x[5] = x[5].narrow(0, 0, 3);  // window factor for 3 of 4 heads
  EXPECT_THROW(run(Variant::lolcats, x, {}, options(MixerForm::chunked, s)), c10::Error);
  x = make_inputs(Variant::liger, s, at::kFloat, 1);
  x[1] = x[1].narrow(2, 0, 1).repeat({1, 1, 3, 1});  // 4 query heads over 3 kv heads
  x[2] = x[2].narrow(2, 0, 1).repeat({1, 1, 3, 1});
  EXPECT_THROW(run(Variant::liger, x, {}, options(MixerForm::chunked, s)), c10::Error);
  auto st = prefix_state(Variant::liger, s, at::kFloat);
  st.k = at::cat({st.k, st.k}, 1);  // a cache longer than the window
  st.v = at::cat({st.v, st.v}, 1);
  EXPECT_THROW(run(Variant::liger, make_inputs(Variant::liger, s, at::kFloat, 1), st, options(MixerForm::chunked, s)),
               c10::Error);
}

}  // namespace
}  // namespace linearize::kernels
