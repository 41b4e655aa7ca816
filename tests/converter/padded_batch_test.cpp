// A left-padded batch through the LibTorch reference (CausalLM::forward with an attention mask) equals each
// row alone: for every fixture family's source model and every recipe's conversion, in the chunked and the
// parallel forms. This is the oracle of the exports' padded-batch rows (scripts/check_hf_export.py and
// scripts/check_onnx_export.py compare their padded batches with `linearize forward`'s).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "converter/linearized.h"
#include "converter/recipes/recipe.h"
#include "conversion_test_util.h"

namespace linearize {
namespace {

// The prompts' lengths: past the hybrids' 64-key windows and Mistral's 16 (a padded key would enter a window
// and, past it, a linear state), one shorter than a window, one token alone. Width 100: 99 padding tokens.
const std::vector<std::int64_t> kLengths = {100, 70, 1};

// Each row alone and the padded batch compute the same sums in another order (other chunk boundaries,
// batched matmuls of other shapes): fp32 rounding, 2^-24 per operation, summed over at most a few hundred terms
// a layer. Measured with `linearize forward --batch-ids` (rows of 300, 150 and 1 tokens): 4e-7 of the largest
// logit on deep-llama (24 layers) and its lolcats conversion, 2.9e-6 on the pretrained SmolLM2-135M (30 layers,
// scripts/fetch_real_model.py); rounding grows with depth and width about as their square roots, so a 32-layer
// 8B model stays near 1e-5. 1e-4 leaves a margin of 10. A
// padded token seen by a real one (one key in a window of 64, one write into a state, a shifted position)
// moves logits by 1e-2 and more (2.2e-3 on tiny-granite's fresh gated-deltanet, whose 0.22 residual multiplier damps
// every branch): the unmasked batch below must exceed the tolerance tenfold, so the masked check can fail.
constexpr double kTolerance = 1e-4;

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>() /
         expected.to(at::kDouble).abs().max().item<double>();
}

struct PaddedBatch {
  std::vector<at::Tensor> prompts;  // [1, length] each
  at::Tensor ids, mask;             // [B, width], left-padded with id 0
};

PaddedBatch padded_batch(std::int64_t vocab) {
  at::manual_seed(7);
  PaddedBatch batch;
  const std::int64_t width = *std::max_element(kLengths.begin(), kLengths.end());
  batch.ids = at::zeros({static_cast<std::int64_t>(kLengths.size()), width}, at::kLong);
  batch.mask = at::zeros_like(batch.ids);
  for (std::size_t i = 0; i < kLengths.size(); ++i) {
    const auto prompt = at::randint(1, vocab, {1, kLengths[i]}, at::kLong);
    batch.prompts.push_back(prompt);
    const auto row = static_cast<std::int64_t>(i);
    batch.ids[row].narrow(0, width - kLengths[i], kLengths[i]).copy_(prompt[0]);
    batch.mask[row].narrow(0, width - kLengths[i], kLengths[i]).fill_(1);
  }
  return batch;
}

// The largest relative error of each row's real positions in `logits` [B, width, vocab] against the row alone.
double worst_row_error(const CausalLM& model, const PaddedBatch& batch, const at::Tensor& logits, kernels::MixerForm form) {
  double worst = 0;
  for (std::size_t i = 0; i < batch.prompts.size(); ++i) {
    const auto n = batch.prompts[i].size(1);
    const auto alone = model.forward(batch.prompts[i], {}, form)[0];
    worst = std::max(worst, relative_error(logits[static_cast<std::int64_t>(i)].narrow(0, logits.size(1) - n, n), alone));
  }
  return worst;
}

void expect_padding_is_a_no_op(const CausalLM& model, const std::string& what) {
  const auto batch = padded_batch(model.config().vocab_size);
  for (const auto form : {kernels::MixerForm::chunked, kernels::MixerForm::parallel}) {
    const auto logits = model.forward(batch.ids, {}, form, batch.mask);
    EXPECT_TRUE(logits.isfinite().all().item<bool>()) << what << ": padded rows must stay finite";
    const double err = worst_row_error(model, batch, logits, form);
    EXPECT_LE(err, kTolerance) << what << " (" << kernels::to_string(form) << ")";
  }
  // Without the mask the padding is read as tokens: the comparison above can fail.
  const auto unmasked = model.forward(batch.ids, {}, kernels::MixerForm::chunked);
  EXPECT_GT(worst_row_error(model, batch, unmasked, kernels::MixerForm::chunked), 10 * kTolerance) << what << " unmasked";
}

// "source" and every registered recipe.
std::vector<std::string> models() {
  std::vector<std::string> names{"source"};
  for (const auto& recipe : registered_recipes()) names.push_back(recipe.name);
  return names;
}

class PaddedBatchEqualsEachAlone : public testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PaddedBatchEqualsEachAlone, InTheChunkedAndParallelForms) {
  const auto& [fixture, model] = GetParam();
  if (model == "source") {
    expect_padding_is_a_no_op(CausalLM::load(test::fixtures_dir() / fixture), fixture + " source");
    return;
  }
  test::TempDir dir;
  expect_padding_is_a_no_op(load_model(test::convert_fixture(dir, fixture, model)), fixture + " " + model);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PaddedBatchEqualsEachAlone, testing::Combine(testing::ValuesIn(test::fixture_models()), testing::ValuesIn(models())),
                         [](const testing::TestParamInfo<std::tuple<std::string, std::string>>& param) {
                           auto name = std::get<0>(param.param) + "_" + std::get<1>(param.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace linearize
