// verify's real-model checks: the built-in prompts hit the chunk and window edges with real text, the fp64
// per-layer rows are exact and see a fault the compute-dtype drift could hide, greedy generation agreement,
// the JUnit report, and the RoPE scaling a recurrent state cannot follow.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "converter/linearized.h"
#include "converter/verify.h"
#include "converter/verify_text.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "conversion_test_util.h"

namespace linearize {
namespace {

using test::convert_fixture;

using test::report_row;

std::vector<std::size_t> lengths(const VerifyPrompts& prompts) {
  std::vector<std::size_t> out;
  for (const auto& p : prompts.ids) out.push_back(p.size());
  return out;
}

// Chunk 64 with the recipe's window 64, and Mistral's sliding window 16 besides: 1, C-1, C, C+1, W-1, W,
// W+1 for each window, and 2 max(W, C) + C + 1 (three chunks at least; the window cache evicts).
TEST(VerifyPrompts, BuiltInTextIsCutAtChunkAndWindowEdges) {
  test::TempDir dir;
  const auto llama = convert_fixture(dir, "tiny-llama", "lolcats");
  const auto llama_prompts = builtin_verify_prompts(llama, load_model_config(llama / "config.json"));
  EXPECT_EQ(lengths(llama_prompts), (std::vector<std::size_t>{1, 63, 64, 65, 193}));
  EXPECT_EQ(llama_prompts.origin.rfind("built-in text", 0), 0u) << llama_prompts.origin;

  const auto mistral = convert_fixture(dir, "tiny-mistral", "lolcats", {{"window", 32}});
  EXPECT_EQ(lengths(builtin_verify_prompts(mistral, load_model_config(mistral / "config.json"))),
            (std::vector<std::size_t>{1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 193}));
}

// The prompts are the built-in samples as the model's tokenizer encodes them: prompt n starts at sample n.
TEST(VerifyPrompts, PromptsAreTheSamplesTokenized) {
  const auto dir = test::fixtures_dir() / "tiny-llama";
  const auto prompts = builtin_verify_prompts(dir, load_model_config(dir / "config.json"));
  const auto tokenizer = Tokenizer::from_dir(dir);
  const auto& texts = builtin_verify_texts();
  ASSERT_GE(texts.size(), 4u);
  ASSERT_TRUE(tokenizer.bos_id());
  for (std::size_t n = 1; n < prompts.ids.size(); ++n) {
    // The fixture's tokenizer adds no BOS itself; verify starts every sample with it.
    auto sample = tokenizer.encode(texts[n % texts.size()]);
    sample.insert(sample.begin(), *tokenizer.bos_id());
    const auto& p = prompts.ids[n];
    const auto common = std::min(p.size(), sample.size());
    EXPECT_TRUE(std::equal(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(common), sample.begin())) << "prompt " << n;
  }
}

TEST(VerifyPrompts, RandomIdsOnlyWithoutATokenizerAndTheReportSaysSo) {
  test::TempDir dir;
  const auto out = convert_fixture(dir, "tiny-llama", "hedgehog");
  std::filesystem::remove(out / "tokenizer.json");
  const auto config = load_model_config(out / "config.json");
  const auto prompts = builtin_verify_prompts(out, config);
  EXPECT_NE(prompts.origin.find("random token ids"), std::string::npos);
  EXPECT_EQ(lengths(prompts), (std::vector<std::size_t>{1, 63, 64, 65, 193}));
  EXPECT_EQ(prompts.ids, builtin_verify_prompts(out, config).ids) << "deterministic";
  record_verify_logits(out, load_model(out), prompts.ids);
  VerifyOptions options;
  options.model = out;
  const auto report = verify_model(options);
  EXPECT_NE(report_row(report, "verify prompts").detail.find("random token ids"), std::string::npos);
}

// Every converted layer is checked in fp64 to 1e-10, the worst layer named; the compute-dtype drift rows
// carry their derived bound. Converting layers 0 and 2 of three leaves layer 1 as softmax: never "worst".
TEST(VerifyLayerForms, Fp64RowsAreExactAndNameTheWorstLayer) {
  test::TempDir dir;
  const auto out = convert_fixture(dir, "tiny-qwen2", "lolcats", {{"softmax_layers", {1}}, {"window", 16}});
  const auto report = record_and_verify(out, test::fixtures_dir() / "tiny-qwen2");
  EXPECT_TRUE(report.passed()) << report.table();
  for (const char* name : {"per layer fp64: parallel", "per layer fp64: recurrent", "per layer fp64: split prompt"}) {
    const auto& c = report_row(report, name);
    EXPECT_LE(c.value, 1e-10) << name;
    EXPECT_EQ(c.tolerance, 1e-10);
    EXPECT_TRUE(c.detail.find("worst layer 0 ") == 0 || c.detail.find("worst layer 2 ") == 0) << c.detail;
    EXPECT_NE(c.detail.find("of 2 converted"), std::string::npos) << c.detail;
  }
  const auto& drift = report_row(report, "drift in fp32: recurrent decode");
  EXPECT_GT(drift.tolerance, 0);
  EXPECT_LE(drift.value, drift.tolerance);
  EXPECT_NE(report_row(report, "drift in fp32: parallel").detail.find("bound 4 u sqrt(T) L A"), std::string::npos);
}

// --prompt-ids of a few tokens (as for an 8B model on a small machine) are shorter than every chunk and
// window edge: the fp64 split row still cuts the prompt (in half), not one call compared with itself.
TEST(VerifyLayerForms, APromptShorterThanEveryEdgeIsStillSplit) {
  test::TempDir dir;
  const auto out = convert_fixture(dir, "tiny-llama", "liger-gla");
  VerifyOptions options;
  options.prompts.ids = {{1, 5, 9, 13}};
  options.prompts.origin = "--prompt-ids";
  options.thresholds.generate_tokens = 2;
  const auto report = record_and_verify(out, test::fixtures_dir() / "tiny-llama", options);
  EXPECT_TRUE(report.passed()) << report.table();
  const auto& split = report_row(report, "per layer fp64: split prompt");
  EXPECT_NE(split.detail.find("; cut at 2"), std::string::npos) << split.detail;
  EXPECT_LE(split.value, 1e-10);
}

// Greedy generation: a conversion that keeps every layer as softmax continues exactly as the source; a
// training-free hedgehog conversion leaves it early, and --min-gen-agree 1 fails it.
TEST(VerifyGeneration, AgreementIsMeasuredAndEnforcedWhenAsked) {
  test::TempDir dir;
  const auto exact = convert_fixture(dir, "tiny-llama", "hedgehog", {{"softmax_layers", {0, 1}}});
  VerifyOptions options;
  options.thresholds.min_gen_agree = 1.0;
  const auto same = record_and_verify(exact, test::fixtures_dir() / "tiny-llama", options);
  const auto& agree = report_row(same, "greedy generation agreement");
  EXPECT_EQ(agree.value, 1.0) << agree.detail;
  EXPECT_TRUE(agree.passed);
  EXPECT_NE(agree.detail.find("4 of 4 continuations identical"), std::string::npos) << agree.detail;

  test::TempDir other;
  const auto lossy = convert_fixture(other, "tiny-llama", "hedgehog");
  const auto report = record_and_verify(lossy, test::fixtures_dir() / "tiny-llama", options);
  const auto& diverged = report_row(report, "greedy generation agreement");
  EXPECT_LT(diverged.value, 1.0) << diverged.detail;
  EXPECT_FALSE(diverged.passed);
  EXPECT_FALSE(report.passed());
}

// A JUnit testcase per check; a FAIL is a <failure> carrying value and tolerance; text is escaped.
TEST(VerifyReport, JunitHasOneCasePerCheckAndFailuresCarryTheirFigures) {
  VerifyReport report;
  report.checks.push_back({"L1", "per layer fp64: a < b & \"c\"", 3e-9, "<=", 1e-10, true, false, "worst layer 7 of 30"});
  report.checks.push_back({"L4", "top-1 agreement", 0.9, "", 0, false, true, ""});
  const auto xml = report.junit("linearize verify m");
  EXPECT_NE(xml.find("tests=\"2\" failures=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("name=\"per layer fp64: a &lt; b &amp; &quot;c&quot;\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("<failure message=\"value 3.000e-09, tolerance &lt;= 1.000e-10; worst layer 7 of 30\""),
            std::string::npos)
      << xml;
  EXPECT_NE(xml.find("<system-out>value 0.9 (reported, not enforced)</system-out>"), std::string::npos) << xml;
}

// Dynamic NTK RoPE: refused before anything is written, naming the field and why.
TEST(ConvertRope, DynamicScalingIsRefusedWithTheReason) {
  test::TempDir dir;
  test::copy_fixture("tiny-qwen2", dir / "src", [](nlohmann::json& c) { c["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}}; });
  ConvertOptions options;
  options.source = dir / "src";
  options.out = dir / "out";
  options.recipe = "supra";
  try {
    convert_checkpoint(options);
    FAIL() << "dynamic RoPE converted";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rope_scaling.rope_type"), std::string::npos) << what;
    EXPECT_NE(what.find("recurrent state"), std::string::npos) << what;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "out"));
}

}  // namespace
}  // namespace linearize
