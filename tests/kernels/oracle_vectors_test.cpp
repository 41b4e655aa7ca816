// Every form of every mixer against test vectors from an independent Python oracle
// (tests/kernels/make_kernel_vectors.py: fla's naive recurrences, fla's layouts and fixed scales; the hybrids
// as a per-token loop over an explicit window buffer), fp64.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>

#include "formats/safetensors.h"
#include "kernels/delta_rule.h"
#include "kernels/feature_maps.h"
#include "kernels/hybrid_attention.h"
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

class HybridOracleVectors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    file_ = new SafetensorsFile(SafetensorsFile::open(test::fixtures_dir() / "kernels" / "hybrid_vectors.safetensors"));
  }
  static void TearDownTestSuite() { delete file_; }
  static at::Tensor get(const std::string& name) { return file_->tensor(name).clone(); }

  using Run = std::function<HybridAttentionOutput(int64_t start, int64_t length, const HybridState&, MixerForm)>;

  // The three forms over all 33 tokens (chunk 16 leaves a partial chunk), and a chunked prefill of 20
  // tokens followed by recurrent decode steps, against the loop's outputs, state and window buffer.
  static void expect_forms_match(const Run& run, const std::string& prefix) {
    const int64_t T = get("hybrid.q").size(1);
    for (auto form : {MixerForm::parallel, MixerForm::chunked, MixerForm::recurrent}) {
      const auto out = run(0, T, {}, form);
      EXPECT_LE(test::max_rel_diff(out.o, get(prefix + ".o")), 1e-10) << prefix << " " << to_string(form);
      EXPECT_LE(test::max_rel_diff(out.state.linear.kv, get(prefix + ".h")), 1e-10) << prefix << " " << to_string(form);
      EXPECT_TRUE(out.state.k.equal(get(prefix + ".cache_k")) && out.state.v.equal(get(prefix + ".cache_v"))) << prefix;
    }
    auto out = run(0, 20, {}, MixerForm::chunked);
    std::vector<at::Tensor> outs{out.o};
    for (int64_t t = 20; t < T; ++t) {
      out = run(t, 1, out.state, MixerForm::recurrent);
      outs.push_back(out.o);
    }
    EXPECT_LE(test::max_rel_diff(at::cat(outs, 1), get(prefix + ".o")), 1e-10) << prefix << " decode";
  }

  static HybridAttentionOptions options(MixerForm form) {
    HybridAttentionOptions opt;
    opt.form = form;
    opt.window = get("hybrid.window").item<int64_t>();
    opt.chunk_size = 16;
    return opt;
  }
  static at::Tensor at_time(const std::string& name, int64_t start, int64_t length) { return get(name).narrow(1, start, length); }

  static SafetensorsFile* file_;
};
SafetensorsFile* HybridOracleVectors::file_ = nullptr;

TEST_F(HybridOracleVectors, LigerMatchesWindowBufferLoop) {
  expect_forms_match(
      [](int64_t start, int64_t length, const HybridState& st, MixerForm form) {
        const auto t = [&](const std::string& name) { return at_time(name, start, length); };
        return liger_attention({t("hybrid.q"), t("hybrid.k"), t("hybrid.v"), t("liger.phi_q"), t("liger.phi_k"), t("liger.gk")},
                               st, options(form));
      },
      "liger");
}

// Hedgehog maps per query head on the kv heads' keys, applied as keys leave the window.
TEST_F(HybridOracleVectors, LolcatsMatchesWindowBufferLoop) {
  const auto map_k = get("lolcats.map_k");
  const auto phi_k = [map_k](const at::Tensor& k) { return hedgehog(k.repeat_interleave(map_k.size(0) / k.size(2), 2), map_k); };
  expect_forms_match(
      [&](int64_t start, int64_t length, const HybridState& st, MixerForm form) {
        const auto t = [&](const std::string& name) { return at_time(name, start, length); };
        return lolcats_attention({t("hybrid.q"), t("hybrid.k"), t("hybrid.v"), t("lolcats.phi_q"), phi_k,
                                  get("lolcats.window_factor")},
                                 st, options(form));
      },
      "lolcats");
}

}  // namespace
}  // namespace linearize::kernels
