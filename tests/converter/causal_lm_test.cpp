// The reference forward against what transformers computed for the fixtures (tests/fixtures/*/
// reference.safetensors, fp32, eager attention), decode through step() against the full forward, and a
// bf16 model against fp32.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "converter/architectures/registry.h"
#include "converter/model/causal_lm.h"
#include "converter/model_config.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

// max |a - b| / max |b|: scale-free, so one bound serves logits and hidden states of any magnitude.
double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>() /
         expected.to(at::kDouble).abs().max().item<double>();
}

// The same per position ([T, d] rows), worst row: deep-llama's <|bos|> row carries channels of +-1000, and
// measured against those a 1e-5 bound would let the other positions' O(1) channels be off by 1e-2.
double relative_error_per_position(const at::Tensor& actual, const at::Tensor& expected) {
  const auto e = expected.to(at::kDouble);
  return ((actual.to(at::kDouble) - e).abs().amax(-1) / e.abs().amax(-1)).max().item<double>();
}

// fp32 with the same operations in a different order (fused SDPA vs eager softmax, another GEMM blocking)
// differs by a few ulps per op: 2^-24 ~ 6e-8 relative, grown by at most a few hundred ops and a softmax's
// amplification through 2-3 layers stays near 1e-6. 1e-5 (hidden states) and 1e-4 (logits, after the
// largest reductions) are the bounds, ~10x above that, and far below any real bug: a wrong RoPE
// variant, a missing bias or an off-by-one window moves outputs by 1e-2 or more.
constexpr double kHiddenTolerance = 1e-5;
constexpr double kLogitTolerance = 1e-4;

class ReferenceForward : public testing::TestWithParam<std::string> {
 protected:
  std::filesystem::path dir() const { return test::fixtures_dir() / GetParam(); }
  SafetensorsFile reference() const { return SafetensorsFile::open(dir() / "reference.safetensors"); }
};

TEST_P(ReferenceForward, LogitsAndEveryHiddenStateMatchTransformers) {
  const auto model = CausalLM::load(dir());
  const auto ref = reference();
  const auto layers = model.config().num_hidden_layers;
  for (int i = 0; i < 3; ++i) {
    const std::string p = "prompt." + std::to_string(i) + ".";
    std::map<std::string, at::Tensor> seen;
    const auto logits = model.forward(ref.tensor(p + "input_ids").unsqueeze(0),
                                      [&](const std::string& name, const at::Tensor& t) { seen[name] = t[0]; });
    EXPECT_LE(relative_error(logits[0], ref.tensor(p + "logits")), kLogitTolerance) << p;
    // transformers' hidden_states: the embeddings, each layer's output but the last, then the final norm.
    for (std::int64_t j = 0; j <= layers; ++j) {
      const std::string ours = j == 0 ? "embed" : j == layers ? "norm" : "layers." + std::to_string(j - 1) + ".out";
      EXPECT_LE(relative_error_per_position(seen.at(ours), ref.tensor(p + "hidden." + std::to_string(j))), kHiddenTolerance)
          << p << "hidden." << j << " vs " << ours;
    }
    EXPECT_LE(relative_error_per_position(seen.at("layers." + std::to_string(layers - 1) + ".out"), ref.tensor(p + "last_layer_prenorm")),
              kHiddenTolerance);
  }
}

TEST_P(ReferenceForward, GreedyDecodeThroughStepEqualsTransformersGenerate) {
  const auto model = CausalLM::load(dir());
  const auto ref = reference();
  const auto expected = ref.tensor("generate.output_ids");
  auto state = model.new_state();
  auto logits = model.prefill(ref.tensor("generate.prompt_ids").unsqueeze(0), state);
  std::vector<std::int64_t> generated;
  for (std::int64_t n = 0; n < expected.size(0); ++n) {
    const auto next = logits.argmax(-1);
    generated.push_back(next.item<std::int64_t>());
    logits = model.step(next, state);
  }
  const auto got = at::tensor(generated, at::kLong);
  EXPECT_TRUE(got.equal(expected)) << "ours " << got << "\ntransformers " << expected;
}

TEST_P(ReferenceForward, PrefillThenStepsEqualOneFullForward) {
  // 8 tokens of prefill, then one token at a time up to 20: past the Mistral window of 16, so the
  // trimmed window cache must hold exactly the keys the full forward's mask lets through.
  const auto model = CausalLM::load(dir());
  const auto ids = reference().tensor("prompt.1.input_ids").unsqueeze(0);
  const auto full = model.forward(ids)[0];
  auto state = model.new_state();
  std::vector<at::Tensor> rows{model.prefill(ids.narrow(1, 0, 8), state)[0]};
  for (std::int64_t t = 8; t < ids.size(1); ++t) rows.push_back(model.step(ids.select(1, t), state)[0]);
  const auto stepped = at::stack(rows);
  EXPECT_LE(relative_error(stepped, full.narrow(0, 7, ids.size(1) - 7)), kLogitTolerance);
  // The cache of a sliding layer never holds more than window - 1 keys per kv head.
  const auto per_key = 2 * model.config().num_key_value_heads * model.config().head_dim * 4;
  for (std::int64_t i = 0; i < model.config().num_hidden_layers; ++i) {
    if (model.config().layer_types[static_cast<std::size_t>(i)] == AttentionKind::Sliding) {
      EXPECT_EQ(state.layers[static_cast<std::size_t>(i)]->bytes(), (*model.config().sliding_window - 1) * per_key) << "layer " << i;
    }
  }
}

TEST_P(ReferenceForward, Bf16ComputeStaysCloseToFp32) {
  const auto fp32 = CausalLM::load(dir());
  LoadOptions bf16_options;
  bf16_options.dtype = at::kBFloat16;
  const auto bf16 = CausalLM::load(dir(), bf16_options);
  const auto ids = reference().tensor("prompt.0.input_ids").unsqueeze(0);
  const auto expected = fp32.forward(ids)[0];
  const auto got = bf16.forward(ids)[0];
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  // bf16 keeps 8 significant bits (unit roundoff u = 2^-8 ~ 3.9e-3). Every linear, norm and residual
  // rounds its output once; through 2-3 layers that is ~15-25 roundings whose errors add at worst
  // linearly: 25u ~ 0.1 of the largest logit. A real bug (fp16 overflow, a bf16 softmax, a wrong cast)
  // moves logits by the same order as the logits themselves.
  EXPECT_LE(relative_error(got, expected), 0.1);
  // And the prediction mostly survives: greedy tokens agree where fp32 is not near a tie.
  const auto agree = got.argmax(-1).eq(expected.argmax(-1)).to(at::kFloat).mean().item<double>();
  EXPECT_GE(agree, 0.75);
}

// "deep-llama" -> "DeepLlama".
std::string fixture_test_name(const testing::TestParamInfo<std::string>& param) {
  std::string name;
  bool upper = true;
  for (const char c : param.param) {
    if (c == '-') {
      upper = true;
      continue;
    }
    name += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return name;
}

// Every family-wide test iterates test::fixture_models(): each registered family must have a fixture there.
TEST(Fixtures, EveryRegisteredFamilyHasOne) {
  std::set<std::string> covered;
  for (const auto& model : test::fixture_models()) covered.insert(load_model_config(test::fixtures_dir() / model / "config.json").family->model_type);
  for (const auto& arch : architectures()) EXPECT_TRUE(covered.count(arch.model_type)) << arch.model_type << " has no fixture";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceForward, testing::ValuesIn(test::fixture_models()),
                         fixture_test_name);

}  // namespace
}  // namespace linearize
