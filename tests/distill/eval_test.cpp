// linearize eval's measurements (distill/eval.h): the position buckets against an independent full forward, the
// passkey prompt's length and needle, the answer's key, and the bookkeeping of a model against itself and
// against its conversion.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "converter/linearized.h"
#include "converter/verify_text.h"
#include "distill/eval.h"
#include "test_util.h"
#include "converter/conversion_test_util.h"

namespace linearize {
namespace {

TEST(Eval, BucketEdgesGrowFourfoldThenDouble) {
  EXPECT_EQ(bucket_edges(4096), (std::vector<std::int64_t>{0, 64, 256, 1024, 2048, 4096}));
  EXPECT_EQ(bucket_edges(5000), (std::vector<std::int64_t>{0, 64, 256, 1024, 2048, 4096, 8192}));
  EXPECT_EQ(bucket_edges(100), (std::vector<std::int64_t>{0, 64, 256}));
  EXPECT_EQ(bucket_edges(64), (std::vector<std::int64_t>{0, 64}));
  EXPECT_EQ(bucket_edges(65), (std::vector<std::int64_t>{0, 64})) << "its last prediction is at position 63";
  EXPECT_EQ(bucket_edges(66), (std::vector<std::int64_t>{0, 64, 256}));
}

TEST(Eval, TheAnswerIsItsFirstNumberOfFiveDigits) {
  EXPECT_EQ(first_key(" 12345. The"), "12345");
  EXPECT_EQ(first_key("The key is 54321 and 11111"), "54321");
  EXPECT_EQ(first_key(" 123456"), "") << "six digits are not the key";
  EXPECT_EQ(first_key(" 1234 12345"), "") << "the first number is the answer";
  EXPECT_EQ(first_key("no key"), "");
}

TEST(Eval, PasskeyPromptsHaveTheirLengthAndTheKeyAtItsDepth) {
  const auto tokenizer = Tokenizer::from_dir(test::fixtures_dir() / "tiny-llama");
  const auto sentence = static_cast<std::int64_t>(
      tokenizer.encode(" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.", false).size());
  for (const std::int64_t length : {200, 512, 1000}) {
    std::int64_t previous = -1;
    for (const double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      const auto p = passkey_prompt(tokenizer, length, depth, "31415");
      EXPECT_EQ(static_cast<std::int64_t>(p.ids.size()), length);
      const auto text = tokenizer.decode(p.ids);
      EXPECT_NE(text.find("The pass key is 31415. Remember it. 31415 is the pass key."), std::string::npos) << text;
      EXPECT_NE(text.rfind("What is the pass key? The pass key is"), std::string::npos);
      EXPECT_EQ(text.find("pass key is 31415"), text.rfind("pass key is 31415")) << "one needle";
      // The needle starts within one filler sentence of depth x the filler's span.
      const auto head = (tokenizer.bos_id() ? 1 : 0) + static_cast<std::int64_t>(tokenizer.encode(
          "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about "
          "the important information there.", false).size());
      const auto needle = static_cast<std::int64_t>(tokenizer.encode(" The pass key is 31415. Remember it. 31415 is the pass key.", false).size());
      const auto question = static_cast<std::int64_t>(tokenizer.encode(" What is the pass key? The pass key is", false).size());
      const double span = static_cast<double>(length - head - needle - question);
      EXPECT_LE(std::abs(static_cast<double>(p.needle_at - head) - depth * span), static_cast<double>(sentence)) << length << " " << depth;
      EXPECT_GE(p.needle_at, previous) << "deeper keys sit no earlier";
      previous = p.needle_at;
    }
  }
  EXPECT_THROW(passkey_prompt(tokenizer, 40, 0.5, "31415"), std::length_error);
}

std::vector<std::int64_t> builtin_text_ids(const Tokenizer& tokenizer) {
  std::string text;
  for (const auto& t : builtin_verify_texts()) text += std::string(t) + "\n";
  return tokenizer.encode(text, false);
}

EvalOptions small_options() {
  EvalOptions options;
  options.lengths = {200, 300};  // the fixture tokenizer spends about one token a character: 162 hold a passkey prompt
  options.depths = {0.0, 1.0};
  options.passkey_trials = 1;
  options.generation_prompts = 2;
  options.generation_tokens = 8;
  return options;
}

// The buckets' perplexities are the mean -log p over their positions of every window, which a full forward's
// log_softmax gives independently (one [T, vocab] matrix instead of slices of hidden states); both fp32 on
// the same kernels, so they differ by summation order only: 1e-5 relative on a mean of log-probabilities.
TEST(Eval, PerplexityByPositionEqualsTheFullForward) {
  const auto dir = test::fixtures_dir() / "tiny-llama";
  const auto tokenizer = Tokenizer::from_dir(dir);
  const auto model = load_model(dir);
  const auto text = builtin_text_ids(tokenizer);
  const auto options = small_options();
  const auto result = evaluate_model(model, &model, tokenizer, text, options, nullptr);

  const auto edges = bucket_edges(300);
  std::vector<double> sum(edges.size() - 1), count(edges.size() - 1);
  const auto prefix = tokenizer.encode("", true);
  ASSERT_EQ(result.windows.size(), options.lengths.size() * static_cast<std::size_t>(options.windows_per_length));
  for (std::size_t i = 0; i < result.windows.size(); ++i) {
    const auto& w = result.windows[i];
    const auto body = w.length - static_cast<std::int64_t>(prefix.size());
    ASSERT_GE(w.offset, 0);
    ASSERT_LE(w.offset + body, static_cast<std::int64_t>(text.size()));
    for (std::size_t j = 0; j < i; ++j) EXPECT_NE(result.windows[j].offset, w.offset) << "no window is a prefix of another";
    auto window = prefix;
    window.insert(window.end(), text.begin() + w.offset, text.begin() + w.offset + body);
    const auto ids = at::tensor(window, at::kLong).unsqueeze(0);
    const auto lp = at::log_softmax(model.forward(ids)[0].to(at::kDouble), -1);
    for (std::int64_t p = 0; p + 1 < w.length; ++p) {
      const auto b = static_cast<std::size_t>(std::upper_bound(edges.begin(), edges.end(), p) - edges.begin() - 1);
      sum[b] -= lp[p][window[static_cast<std::size_t>(p + 1)]].item<double>();
      count[b] += 1;
    }
  }
  ASSERT_EQ(result.buckets.size(), sum.size());
  for (std::size_t b = 0; b < sum.size(); ++b) {
    EXPECT_EQ(result.buckets[b].tokens, static_cast<std::int64_t>(count[b]));
    EXPECT_NEAR(result.buckets[b].model_nll, sum[b] / count[b], 1e-5 * sum[b] / count[b]) << "bucket " << b;
    // The model against itself: the same computation twice, so equal to the bit.
    EXPECT_EQ(result.buckets[b].source_nll, result.buckets[b].model_nll);
    EXPECT_EQ(result.buckets[b].kl, 0.0);
    EXPECT_EQ(result.buckets[b].top1, 1.0);
  }
  for (const auto& cell : result.passkey) EXPECT_EQ(cell.model_found, cell.source_found);
  EXPECT_EQ(result.generation_agreement, 1.0);
  EXPECT_EQ(result.samples.size(), 2u);
  const auto json = eval_json(result, options);
  EXPECT_EQ(json["perplexity_by_position"].size(), sum.size());
  EXPECT_EQ(json["passkey_by_length"].size(), options.lengths.size());
}

// A conversion (no training) against its source: the figures separate the two (KL > 0 in every bucket, a
// ratio other than 1), and a model alone has no source columns and no generation agreement.
TEST(Eval, AConversionDiffersFromItsSourceAndAModelAloneHasNoSource) {
  test::TempDir tmp;
  const auto dir = test::fixtures_dir() / "tiny-llama";
  const auto tokenizer = Tokenizer::from_dir(dir);
  const auto source = load_model(dir);
  const auto converted = load_model(test::convert_fixture(tmp, "tiny-llama", "gated-deltanet"));
  const auto text = builtin_text_ids(tokenizer);
  const auto result = evaluate_model(converted, &source, tokenizer, text, small_options(), nullptr);
  for (const auto& b : result.buckets) {
    EXPECT_GT(b.kl, 1e-4) << b.begin << "-" << b.end;
    EXPECT_NE(b.model_nll, b.source_nll);
  }
  // Top-1 agreement counted independently from full forwards of both models (argmax of [T, vocab] logits
  // instead of slices of hidden states): the paths differ by rounding only, which can flip a near tie, so a
  // bucket may differ by one prediction.
  const auto edges = bucket_edges(300);
  std::vector<double> same(edges.size() - 1), count(edges.size() - 1);
  const auto prefix = tokenizer.encode("", true);
  for (const auto& w : result.windows) {
    auto window = prefix;
    window.insert(window.end(), text.begin() + w.offset, text.begin() + w.offset + w.length - static_cast<std::int64_t>(prefix.size()));
    const auto ids = at::tensor(window, at::kLong).unsqueeze(0);
    const auto agree = converted.forward(ids)[0].argmax(-1).eq(source.forward(ids)[0].argmax(-1));
    for (std::int64_t p = 0; p + 1 < w.length; ++p) {
      const auto b = static_cast<std::size_t>(std::upper_bound(edges.begin(), edges.end(), p) - edges.begin() - 1);
      same[b] += agree[p].item<bool>() ? 1 : 0;
      count[b] += 1;
    }
  }
  double agreed = 0, predictions = 0;
  for (std::size_t b = 0; b < same.size(); ++b) {
    EXPECT_NEAR(result.buckets[b].top1, same[b] / count[b], 1.0 / count[b] + 1e-12) << "bucket " << b;
    agreed += same[b], predictions += count[b];
  }
  EXPECT_LT(agreed, predictions) << "an untrained conversion picks another token somewhere";
  const auto alone = evaluate_model(converted, nullptr, tokenizer, text, small_options(), nullptr);
  EXPECT_FALSE(alone.has_source);
  EXPECT_TRUE(std::isnan(alone.buckets[0].source_nll));
  EXPECT_TRUE(std::isnan(alone.buckets[0].top1));
  EXPECT_TRUE(std::isnan(alone.generation_agreement));
  EXPECT_FALSE(eval_json(alone, small_options())["generation"].contains("agreement"));
  EXPECT_EQ(alone.buckets[0].model_nll, result.buckets[0].model_nll);
  EXPECT_FALSE(eval_json(alone, small_options())["perplexity_by_position"][0].contains("ratio"));
  const auto html = render_report_html(eval_report(result, "eval"));
  EXPECT_NE(html.find("Passkey accuracy: source"), std::string::npos);
  EXPECT_NE(html.find("Perplexity ratio"), std::string::npos);
}

TEST(Eval, RefusesATextShorterThanTheLongestWindow) {
  const auto dir = test::fixtures_dir() / "tiny-llama";
  const auto tokenizer = Tokenizer::from_dir(dir);
  const auto model = load_model(dir);
  EXPECT_THROW(evaluate_model(model, nullptr, tokenizer, std::vector<std::int64_t>(200, 5), small_options(), nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace linearize
