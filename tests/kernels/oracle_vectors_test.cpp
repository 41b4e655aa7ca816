// Every form of every mixer against test vectors from an independent Python oracle
// (tests/kernels/make_kernel_vectors.py: fla's naive recurrences, fla's layouts and fixed scales), fp64.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "formats/safetensors.h"
#include "kernels/delta_rule.h"
#include "kernels/linear_attention.h"
#include "kernels/mixer_test_util.h"
#include "test_util.h"

namespace linearize::kernels {
namespace {

class OracleVectors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    file_ = new SafetensorsFile(SafetensorsFile::open(test::fixtures_dir() / "kernels" / "mixer_vectors.safetensors"));
  }
  static void TearDownTestSuite() { delete file_; }
  static at::Tensor get(const std::string& name) { return file_->tensor(name).clone(); }

  // Runs the three forms (chunk 16, so T = 50 leaves a partial chunk) and compares with the vectors.
  static void expect_forms_match(const LinearAttentionInputs& in, const LinearState& st, LinearAttentionOptions opt,
                                 const std::string& prefix) {
    for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
      opt.form = form;
      opt.chunk_size = 16;
      const auto out = linear_attention(in, st, opt);
      EXPECT_LE(test::max_rel_diff(out.o, get(prefix + ".o")), 1e-10) << prefix << " " << to_string(form);
      EXPECT_LE(test::max_rel_diff(out.state.kv, get(prefix + ".h")), 1e-10) << prefix << " " << to_string(form);
    }
  }

  static LinearAttentionInputs qkv() { return {get("q"), get("k"), get("v"), {}, {}}; }
  static SafetensorsFile* file_;
};
SafetensorsFile* OracleVectors::file_ = nullptr;

TEST_F(OracleVectors, GlaMatchesNaiveRecurrentGla) {
  auto in = qkv();
  in.log_decay = get("gk");
  expect_forms_match(in, {get("h0"), {}}, {}, "gla");  // fla's fixed scale K^-0.5 is our default
}

TEST_F(OracleVectors, SimpleGlaMatchesNaiveRecurrentSimpleGla) {
  auto in = qkv();
  in.log_decay = get("g");
  LinearAttentionOptions opt;
  opt.scale = 0.3;
  expect_forms_match(in, {get("h0"), {}}, opt, "simple_gla");
}

TEST_F(OracleVectors, FixedGammaMatchesSimpleGlaWithConstantGate) {
  auto in = qkv();
  in.log_gamma = get("retention.log_gamma");
  expect_forms_match(in, {get("h0"), {}}, {}, "retention");
}

TEST_F(OracleVectors, LinearAttentionMatchesNaiveRecurrentLinearAttn) {
  expect_forms_match(qkv(), {}, {}, "linear");
  auto in = qkv();
  in.q = get("normalized.q");
  in.k = get("normalized.k");
  LinearAttentionOptions opt;
  opt.normalize = true;  // eps 1e-10, as fla
  expect_forms_match(in, {}, opt, "normalized");
}

// DeltaNet (fla's head-first delta_rule_recurrence, converted) and Gated DeltaNet, unit-norm keys.
TEST_F(OracleVectors, DeltaRuleMatchesNaiveDeltaRuleRecurrences) {
  for (const bool gated : {false, true}) {
    const std::string prefix = gated ? "gated_delta" : "delta";
    DeltaRuleInputs in{get("q"), get("k_l2"), get("v"), get("beta"), gated ? get("g") : at::Tensor()};
    for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
      LinearAttentionOptions opt;
      opt.form = form;
      opt.chunk_size = 16;
      const auto out = delta_rule(in, {get("h0"), {}}, opt);
      EXPECT_LE(test::max_rel_diff(out.o, get(prefix + ".o")), 1e-10) << prefix << " " << to_string(form);
      EXPECT_LE(test::max_rel_diff(out.state.kv, get(prefix + ".h")), 1e-10) << prefix << " " << to_string(form);
    }
  }
}

}  // namespace
}  // namespace linearize::kernels
