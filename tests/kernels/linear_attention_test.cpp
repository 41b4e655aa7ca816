// Linear attention, simple GLA / retention and GLA: the parallel, chunked and recurrent forms agree
// (fp64 to 1e-10, fp32 to a stated tolerance), for every chunk size, with lengths that are not a multiple
// of the chunk, carried state, grouped kv heads; gradients agree and match finite differences.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <string>

#include "kernels/linear_attention.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels {
namespace {

using test::max_rel_diff;

enum class Variant { linear, normalized, simple_gla, gamma, gla };

std::string name(Variant v) {
  switch (v) {
    case Variant::linear: return "Linear";
    case Variant::normalized: return "Normalized";
    case Variant::simple_gla: return "SimpleGla";
    case Variant::gamma: return "FixedGamma";
    case Variant::gla: return "Gla";
  }
  return "?";
}

struct Shape {
  int64_t B = 2, T = 100, Hq = 4, Hkv = 2, K = 16, V = 8;
};

// Seeded inputs for a variant; normalised attention gets positive features (elu + 1), as its feature maps give.
LinearAttentionInputs make_inputs(Variant variant, const Shape& s, at::ScalarType dtype, uint64_t seed = 1) {
  LinearAttentionInputs in;
  in.q = test::randn({s.B, s.T, s.Hq, s.K}, seed, dtype);
  in.k = test::randn({s.B, s.T, s.Hkv, s.K}, seed + 1, dtype);
  in.v = test::randn({s.B, s.T, s.Hkv, s.V}, seed + 2, dtype);
  if (variant == Variant::normalized) {
    in.q = at::elu(in.q) + 1;
    in.k = at::elu(in.k) + 1;
  }
  if (variant == Variant::simple_gla) in.log_decay = test::log_decay({s.B, s.T, s.Hkv}, seed + 3, dtype);
  if (variant == Variant::gla) in.log_decay = test::log_decay({s.B, s.T, s.Hkv, s.K}, seed + 3, dtype);
  if (variant == Variant::gamma) in.log_gamma = at::log(at::linspace(0.8, 0.99, s.Hkv, at::kDouble)).to(dtype);
  return in;
}

LinearState make_state(Variant variant, const Shape& s, at::ScalarType dtype, uint64_t seed = 7) {
  LinearState st;
  st.kv = test::randn({s.B, s.Hkv, s.K, s.V}, seed, dtype);
  if (variant == Variant::normalized) st.k_sum = test::randn({s.B, s.Hkv, s.K}, seed + 1, dtype).abs() + 1;
  return st;
}

LinearAttentionOptions options_for(Variant variant, MixerForm form, int64_t chunk = 64) {
  LinearAttentionOptions o;
  o.form = form;
  o.normalize = variant == Variant::normalized;
  o.chunk_size = chunk;
  return o;
}

// Worst difference of output and final state (both parts of a normalised state).
double diff(const LinearAttentionOutput& a, const LinearAttentionOutput& b) {
  double d = std::max(max_rel_diff(a.o, b.o), max_rel_diff(a.state.kv, b.state.kv));
  if (b.state.k_sum.defined()) d = std::max(d, max_rel_diff(a.state.k_sum, b.state.k_sum));
  return d;
}

LinearAttentionInputs slice(const LinearAttentionInputs& in, int64_t start, int64_t length) {
  LinearAttentionInputs out = in;
  out.q = in.q.narrow(1, start, length);
  out.k = in.k.narrow(1, start, length);
  out.v = in.v.narrow(1, start, length);
  if (in.log_decay.defined()) out.log_decay = in.log_decay.narrow(1, start, length);
  return out;
}

class LinearMixer : public ::testing::TestWithParam<Variant> {};

// fp64: every chunk size (T = 100 is a multiple of none) and the recurrent form match the parallel form.
TEST_P(LinearMixer, FormsAgreeInFp64ForEveryChunkSize) {
  const Variant variant = GetParam();
  const Shape s;
  const auto in = make_inputs(variant, s, at::kDouble);
  const auto st = make_state(variant, s, at::kDouble);
  const auto reference = linear_attention(in, st, options_for(variant, MixerForm::parallel));
  EXPECT_LE(diff(linear_attention(in, st, options_for(variant, MixerForm::recurrent)), reference), 1e-10);
  for (int64_t chunk : {16, 32, 64, 128}) {
    EXPECT_LE(diff(linear_attention(in, st, options_for(variant, MixerForm::chunked, chunk)), reference), 1e-10)
        << "chunk " << chunk;
  }
  if (variant == Variant::gla) {  // the sub-chunk split of the intra-chunk block is exact too
    for (int64_t sub : {1, 4, 8, 32, 64}) {
      auto opt = options_for(variant, MixerForm::chunked);
      opt.sub_chunk_size = sub;
      EXPECT_LE(diff(linear_attention(in, st, opt), reference), 1e-10) << "sub-chunk " << sub;
    }
  }
}

// fp32 against the fp64 oracle. Each output sums ~T*K = 1600 products of O(1) terms; fp32 rounding
// (6e-8 per operation) accumulates like sqrt(n) * eps ~ 2.4e-6 in the worst case and ~1e-7..1e-6 in practice
// (measured: <= 7.4e-7 relative to max |o| for every variant and form). 5e-6 is the sqrt(n) bound with a
// 2x margin; a wrong decay, mask, scale or state hand-over gives errors of 1e-2 or more.
TEST_P(LinearMixer, Fp32MatchesFp64WithinStatedTolerance) {
  const Variant variant = GetParam();
  const Shape s;
  const auto in64 = make_inputs(variant, s, at::kDouble);
  const auto st64 = make_state(variant, s, at::kDouble);
  const auto in32 = make_inputs(variant, s, at::kFloat);
  const auto st32 = make_state(variant, s, at::kFloat);
  const auto reference = linear_attention(in64, st64, options_for(variant, MixerForm::parallel));
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto got = linear_attention(in32, st32, options_for(variant, form));
    EXPECT_EQ(got.o.scalar_type(), at::kFloat);
    EXPECT_EQ(got.state.kv.scalar_type(), at::kFloat);
    EXPECT_LE(diff(got, reference), 5e-6) << to_string(form);
  }
}

// Two calls with the carried state equal one call; and chunked prefill followed by recurrent decode steps
// equals the parallel form over the whole sequence.
TEST_P(LinearMixer, CarriedStateEqualsOneCall) {
  const Variant variant = GetParam();
  const Shape s;
  const auto in = make_inputs(variant, s, at::kDouble);
  const auto st = make_state(variant, s, at::kDouble);
  const at::Tensor kv_before = st.kv.clone();
  const auto whole = linear_attention(in, st, options_for(variant, MixerForm::parallel));
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto first = linear_attention(slice(in, 0, 37), st, options_for(variant, form));
    const auto second = linear_attention(slice(in, 37, s.T - 37), first.state, options_for(variant, form));
    LinearAttentionOutput joined{at::cat({first.o, second.o}, 1), second.state};
    EXPECT_LE(diff(joined, whole), 1e-10) << to_string(form);
  }
  auto out = linear_attention(slice(in, 0, 90), st, options_for(variant, MixerForm::chunked));
  std::vector<at::Tensor> outs{out.o};
  for (int64_t t = 90; t < s.T; ++t) {
    out = linear_attention(slice(in, t, 1), out.state, options_for(variant, MixerForm::recurrent));
    outs.push_back(out.o);
  }
  EXPECT_LE(diff({at::cat(outs, 1), out.state}, whole), 1e-10);
  // From a zero state, the state after the call is the same whichever form made it.
  const auto from_zero = linear_attention(in, {}, options_for(variant, MixerForm::chunked));
  EXPECT_LE(diff(from_zero, linear_attention(in, {}, options_for(variant, MixerForm::recurrent))), 1e-10);
  EXPECT_TRUE(at::equal(st.kv, kv_before)) << "the caller's initial state was modified";
}

// A consumed state (a decode loop's): each recurrent CPU step gives bit for bit what the const path gives
// and, unnormalised, writes the new state over the one it consumed; a state another handle still holds is
// never written.
TEST_P(LinearMixer, AConsumedStateIsUpdatedInPlaceOnlyWhenNothingElseHoldsIt) {
  const Variant variant = GetParam();
  const Shape s;
  const auto in = make_inputs(variant, s, at::kFloat);
  const auto options = options_for(variant, MixerForm::recurrent);
  const auto prefill = linear_attention(slice(in, 0, 90), make_state(variant, s, at::kFloat), options_for(variant, MixerForm::chunked));
  LinearState kept = prefill.state;
  LinearState decoded{prefill.state.kv.clone(), prefill.state.k_sum.defined() ? prefill.state.k_sum.clone() : at::Tensor()};
  for (int64_t t = 90; t < s.T; ++t) {
    const auto reference = linear_attention(slice(in, t, 1), kept, options);
    const void* storage = decoded.kv.const_data_ptr();
    auto step = linear_attention(slice(in, t, 1), std::move(decoded), options);
    EXPECT_TRUE(at::equal(step.o, reference.o) && at::equal(step.state.kv, reference.state.kv)) << "token " << t;
    // The normalised state travels as kv and k_sum, concatenated for the core: a copy either way.
    if (variant != Variant::normalized) {
      EXPECT_EQ(step.state.kv.const_data_ptr(), storage) << "token " << t;
    }
    kept = reference.state;
    decoded = std::move(step.state);
  }
  const LinearState shared = decoded;
  const at::Tensor before = shared.kv.clone();
  const auto step = linear_attention(slice(in, 0, 1), std::move(decoded), options);
  EXPECT_TRUE(at::equal(shared.kv, before)) << "a state another handle holds was written";
  EXPECT_NE(step.state.kv.const_data_ptr(), shared.kv.const_data_ptr());
}

// Grouped kv heads give exactly what repeating k, v and the gates per query head gives.
TEST_P(LinearMixer, GroupedKvHeadsEqualRepeatedHeads) {
  const Variant variant = GetParam();
  const Shape s;
  const auto in = make_inputs(variant, s, at::kDouble);
  const int64_t G = s.Hq / s.Hkv;
  LinearAttentionInputs repeated = in;
  repeated.k = in.k.repeat_interleave(G, 2);
  repeated.v = in.v.repeat_interleave(G, 2);
  if (in.log_decay.defined()) repeated.log_decay = in.log_decay.repeat_interleave(G, 2);
  if (in.log_gamma.defined()) repeated.log_gamma = in.log_gamma.repeat_interleave(G, 0);
  const auto grouped = linear_attention(in, {}, options_for(variant, MixerForm::chunked));
  const auto full = linear_attention(repeated, {}, options_for(variant, MixerForm::parallel));
  EXPECT_LE(max_rel_diff(grouped.o, full.o), 1e-10);
  EXPECT_EQ(grouped.state.kv.size(1), s.Hkv) << "the state is kept per kv head";
  EXPECT_LE(max_rel_diff(grouped.state.kv, full.state.kv.view({s.B, s.Hkv, G, s.K, s.V}).select(2, 0)), 1e-10);
}

struct Leaves {
  std::vector<at::Tensor> tensors;  // q, k, v, [gate], state (, k_sum)
};

// The inputs as fp64 leaves requiring grad, and a scalar loss of the outputs (random weights, so no
// gradient is trivially symmetric).
Leaves leaves_of(const LinearAttentionInputs& in, const LinearState& st) {
  Leaves l;
  for (const auto& t : {in.q, in.k, in.v, in.log_decay, in.log_gamma, st.kv, st.k_sum}) {
    if (t.defined()) l.tensors.push_back(t.detach().clone().set_requires_grad(true));
  }
  return l;
}

at::Tensor loss_of(Variant variant, const std::vector<at::Tensor>& x, const LinearAttentionOptions& opt,
                   const Shape& s) {
  LinearAttentionInputs in;
  LinearState st;
  size_t i = 0;
  in.q = x[i++], in.k = x[i++], in.v = x[i++];
  if (variant == Variant::simple_gla || variant == Variant::gla) in.log_decay = x[i++];
  if (variant == Variant::gamma) in.log_gamma = x[i++];
  st.kv = x[i++];
  if (variant == Variant::normalized) st.k_sum = x[i++];
  const auto out = linear_attention(in, st, opt);
  at::Tensor loss = (out.o * test::randn(out.o.sizes().vec(), 11)).sum() +
                    (out.state.kv * test::randn({s.B, s.Hkv, s.K, s.V}, 12)).sum();
  if (out.state.k_sum.defined()) loss = loss + (out.state.k_sum * test::randn({s.B, s.Hkv, s.K}, 13)).sum();
  return loss;
}

TEST_P(LinearMixer, ChunkedAndRecurrentGradientsEqualParallelGradients) {
  const Variant variant = GetParam();
  Shape s;
  s.T = 45;
  const auto in = make_inputs(variant, s, at::kDouble);
  const auto st = make_state(variant, s, at::kDouble);
  auto grads = [&](MixerForm form) {
    const Leaves l = leaves_of(in, st);
    auto opt = options_for(variant, form, 16);
    opt.sub_chunk_size = 4;
    return torch::autograd::grad({loss_of(variant, l.tensors, opt, s)}, l.tensors);
  };
  const auto reference = grads(MixerForm::parallel);
  for (auto form : {MixerForm::chunked, MixerForm::recurrent}) {
    const auto got = grads(form);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(max_rel_diff(got[i], reference[i]), 1e-10) << to_string(form) << " input " << i;
  }
}

// Autograd of the chunked form against central differences (fp64, small shapes; step 1e-6 gives
// truncation + rounding errors ~1e-9 (measured <= 6e-10), a wrong gradient term is off by O(1)).
TEST_P(LinearMixer, ChunkedGradientMatchesFiniteDifferences) {
  const Variant variant = GetParam();
  Shape s;
  s.B = 1, s.T = 11, s.Hq = 2, s.Hkv = 1, s.K = 4, s.V = 3;
  const auto in = make_inputs(variant, s, at::kDouble, 21);
  const auto st = make_state(variant, s, at::kDouble, 27);
  auto opt = options_for(variant, MixerForm::chunked, 4);
  opt.sub_chunk_size = 2;
  const Leaves l = leaves_of(in, st);
  const double mismatch = test::finite_difference_mismatch(
      [&](const std::vector<at::Tensor>& x) { return loss_of(variant, x, opt, s); }, l.tensors, 6, 99);
  EXPECT_LE(mismatch, 1e-7);
}

INSTANTIATE_TEST_SUITE_P(Kernels, LinearMixer,
                         ::testing::Values(Variant::linear, Variant::normalized, Variant::simple_gla, Variant::gamma,
                                           Variant::gla),
                         [](const ::testing::TestParamInfo<Variant>& param) { return name(param.param); });

// Chunk sizes that 16 does not divide: the sub-chunk becomes the largest divisor <= 16 (24: 12, 40: 10,
// 37: 1), and the result is still exact.
TEST(LinearMixerGla, ChunkSizesNotAMultipleOfTheSubChunkAreExact) {
  const Shape s;
  const auto in = make_inputs(Variant::gla, s, at::kDouble);
  const auto st = make_state(Variant::gla, s, at::kDouble);
  const auto reference = linear_attention(in, st, options_for(Variant::gla, MixerForm::parallel));
  for (int64_t chunk : {24, 37, 40}) {
    EXPECT_LE(diff(linear_attention(in, st, options_for(Variant::gla, MixerForm::chunked, chunk)), reference), 1e-10)
        << "chunk " << chunk;
  }
}

// Log gates of -20 per step on half the channels (the others barely decay): inside a chunk exp(G) reaches
// e^-1280, so a factorisation with any exponent > 0 would overflow. Every factor the chunked form uses is
// <= 1, so fp32 stays finite and both precisions match the fp64 oracle.
TEST(LinearMixerGla, StrongDecayStaysFiniteAndExact) {
  Shape s;
  s.T = 150;
  auto in = make_inputs(Variant::gla, s, at::kDouble);
  in.log_decay = at::where(at::arange(s.K) % 2 == 0, -20.0, -1e-3).to(at::kDouble).expand_as(in.k).contiguous();
  const auto st = make_state(Variant::gla, s, at::kDouble);
  const auto reference = linear_attention(in, st, options_for(Variant::gla, MixerForm::parallel));
  for (int64_t chunk : {16, 64, 128}) {
    EXPECT_LE(diff(linear_attention(in, st, options_for(Variant::gla, MixerForm::chunked, chunk)), reference), 1e-10)
        << "chunk " << chunk;
    LinearAttentionInputs in32 = in;
    in32.q = in.q.to(at::kFloat), in32.k = in.k.to(at::kFloat), in32.v = in.v.to(at::kFloat);
    in32.log_decay = in.log_decay.to(at::kFloat);
    LinearState st32{st.kv.to(at::kFloat), {}};
    const auto got = linear_attention(in32, st32, options_for(Variant::gla, MixerForm::chunked, chunk));
    EXPECT_TRUE(got.o.isfinite().all().item<bool>() && got.state.kv.isfinite().all().item<bool>()) << "chunk " << chunk;
    EXPECT_LE(diff(got, reference), 5e-6) << "chunk " << chunk;
  }
}

TEST(LinearMixerApi, RejectsInconsistentShapes) {
  LinearAttentionInputs in = make_inputs(Variant::gla, Shape{}, at::kFloat);
  in.log_decay = in.log_decay.narrow(3, 0, 3);
  EXPECT_THROW(linear_attention(in, {}, {}), c10::Error);
  in = make_inputs(Variant::linear, Shape{}, at::kFloat);
  in.k = in.k.narrow(2, 0, 1).repeat({1, 1, 3, 1});  // 4 query heads over 3 kv heads
  in.v = in.v.narrow(2, 0, 1).repeat({1, 1, 3, 1});
  EXPECT_THROW(linear_attention(in, {}, {}), c10::Error);
}

TEST(LinearMixerApi, StateBytesFollowTheFormula) {
  const Shape s;
  const auto out = linear_attention(make_inputs(Variant::gla, s, at::kFloat), {}, {});
  EXPECT_EQ(out.state.bytes(), s.B * s.Hkv * s.K * s.V * 4);  // fp32 [B,Hkv,K,V], per kv head
  auto opt = options_for(Variant::normalized, MixerForm::chunked);
  const auto normalized = linear_attention(make_inputs(Variant::normalized, s, at::kFloat), {}, opt);
  EXPECT_EQ(normalized.state.bytes(), s.B * s.Hkv * s.K * (s.V + 1) * 4);
}

}  // namespace
}  // namespace linearize::kernels
