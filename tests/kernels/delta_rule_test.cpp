// DeltaNet / Gated DeltaNet: recurrent, chunked (WY) and parallel forms agree in fp64 for every chunk size
// and in fp32 within a stated tolerance, carry state, and have matching gradients.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include "kernels/delta_rule.h"
#include "kernels/mixer_test_util.h"

namespace linearize::kernels {
namespace {

using test::max_rel_diff;

constexpr int64_t B = 2, T = 100, Hq = 4, Hkv = 2, K = 16, V = 8;

// Unit-norm keys (fla's l2 qk-norm), beta in (0, 1); gated: log gates as in the linear-attention tests.
DeltaRuleInputs make_inputs(bool gated, at::ScalarType dtype, int64_t tokens = T, uint64_t seed = 1) {
  DeltaRuleInputs in;
  in.q = test::randn({B, tokens, Hq, K}, seed).to(dtype);
  const at::Tensor k = test::randn({B, tokens, Hkv, K}, seed + 1);
  in.k = (k / k.norm(2, -1, true)).to(dtype);
  in.v = test::randn({B, tokens, Hkv, V}, seed + 2, dtype);
  in.beta = at::sigmoid(test::randn({B, tokens, Hkv}, seed + 3)).to(dtype);
  if (gated) in.log_decay = test::log_decay({B, tokens, Hkv}, seed + 4, dtype);
  return in;
}

LinearState make_state(at::ScalarType dtype) { return {test::randn({B, Hkv, K, V}, 7, dtype), {}}; }

LinearAttentionOptions options_for(MixerForm form, int64_t chunk = 64) {
  LinearAttentionOptions o;
  o.form = form;
  o.chunk_size = chunk;
  return o;
}

double diff(const LinearAttentionOutput& a, const LinearAttentionOutput& b) {
  return std::max(max_rel_diff(a.o, b.o), max_rel_diff(a.state.kv, b.state.kv));
}

DeltaRuleInputs slice(const DeltaRuleInputs& in, int64_t start, int64_t length) {
  DeltaRuleInputs out = in;
  for (at::Tensor* t : {&out.q, &out.k, &out.v, &out.beta, &out.log_decay}) {
    if (t->defined()) *t = t->narrow(1, start, length);
  }
  return out;
}

class DeltaRule : public ::testing::TestWithParam<bool> {};

TEST_P(DeltaRule, FormsAgreeInFp64ForEveryChunkSize) {
  const auto in = make_inputs(GetParam(), at::kDouble);
  const auto st = make_state(at::kDouble);
  const auto reference = delta_rule(in, st, options_for(MixerForm::recurrent));
  EXPECT_LE(diff(delta_rule(in, st, options_for(MixerForm::parallel)), reference), 1e-10);
  for (int64_t chunk : {16, 32, 64, 128}) {
    EXPECT_LE(diff(delta_rule(in, st, options_for(MixerForm::chunked, chunk)), reference), 1e-10) << chunk;
  }
}

// fp32 vs the fp64 recurrence: the triangular solve of a C x C unit lower system adds a condition-number
// factor on top of the ~sqrt(T*K) * 6e-8 accumulation of the linear mixers (measured <= 1e-6); 1e-5
// leaves 10x, while a wrong beta, decay or solve is off by 1e-2 or more.
TEST_P(DeltaRule, Fp32MatchesFp64WithinStatedTolerance) {
  const auto reference = delta_rule(make_inputs(GetParam(), at::kDouble), make_state(at::kDouble),
                                    options_for(MixerForm::recurrent));
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto got = delta_rule(make_inputs(GetParam(), at::kFloat), make_state(at::kFloat), options_for(form));
    EXPECT_EQ(got.o.scalar_type(), at::kFloat);
    EXPECT_LE(diff(got, reference), 1e-5) << to_string(form);
  }
}

TEST_P(DeltaRule, CarriedStateEqualsOneCall) {
  const auto in = make_inputs(GetParam(), at::kDouble);
  const auto st = make_state(at::kDouble);
  const auto whole = delta_rule(in, st, options_for(MixerForm::recurrent));
  for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
    const auto first = delta_rule(slice(in, 0, 37), st, options_for(form, 16));
    const auto second = delta_rule(slice(in, 37, T - 37), first.state, options_for(form, 16));
    EXPECT_LE(diff({at::cat({first.o, second.o}, 1), second.state}, whole), 1e-10) << to_string(form);
  }
}

TEST_P(DeltaRule, ChunkedGradientsEqualRecurrentGradientsAndFiniteDifferences) {
  const auto in = make_inputs(GetParam(), at::kDouble, 21);
  std::vector<at::Tensor> leaves;
  for (const auto& t : {in.q, in.k, in.v, in.beta, in.log_decay, make_state(at::kDouble).kv}) {
    if (t.defined()) leaves.push_back(t.detach().clone().set_requires_grad(true));
  }
  const bool gated = GetParam();
  auto loss = [&](const std::vector<at::Tensor>& x, MixerForm form) {
    DeltaRuleInputs d{x[0], x[1], x[2], x[3], gated ? x[4] : at::Tensor()};
    const auto out = delta_rule(d, {x.back(), {}}, options_for(form, 8));
    return (out.o * test::randn(out.o.sizes().vec(), 11)).sum() + (out.state.kv * test::randn({B, Hkv, K, V}, 12)).sum();
  };
  const auto chunked = torch::autograd::grad({loss(leaves, MixerForm::chunked)}, leaves);
  const auto recurrent = torch::autograd::grad({loss(leaves, MixerForm::recurrent)}, leaves);
  for (size_t i = 0; i < leaves.size(); ++i) EXPECT_LE(max_rel_diff(chunked[i], recurrent[i]), 1e-10) << "input " << i;
  // central differences, step 1e-6: errors ~1e-9; a wrong term is off by O(1)
  EXPECT_LE(test::finite_difference_mismatch([&](const auto& x) { return loss(x, MixerForm::chunked); }, leaves, 4, 5),
            1e-7);
}

INSTANTIATE_TEST_SUITE_P(Kernels, DeltaRule, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& param) { return param.param ? "Gated" : "Plain"; });

}  // namespace
}  // namespace linearize::kernels
