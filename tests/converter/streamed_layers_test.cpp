// Streamed layers (LoadOptions::stream_layers, docs/architecture.md#streamed-layers): a model that copies one
// layer in at a time computes the bits the resident model computes, on every path (forward, prefill and step,
// run_layer_major), with at most one layer resident; and run_layer_major computes what forward() and prefill()
// compute. Bit identity, not a tolerance: the same operations run on the same shapes over the same values, only
// in another order of layers and prompts, and L2 of verify already asks a reload for the bits of a recording.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "conversion_test_util.h"
#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "converter/names.h"
#include "formats/peft_adapter.h"
#include "converter/verify.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

using test::convert_fixture;

LoadOptions streamed() {
  LoadOptions options;
  options.stream_layers = true;
  return options;
}

void expect_same_bits(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_TRUE(at::equal(a, b)) << what << ": max difference " << (a - b).abs().max().item<double>();
}

// Prompts of 1, 9 and 23 tokens (past the fixtures' 16-token windows), inside every fixture's vocabulary.
std::vector<at::Tensor> prompts() {
  return {at::tensor(std::vector<std::int64_t>{7}, at::kLong).unsqueeze(0), at::arange(3, 12, at::kLong).unsqueeze(0),
          (at::arange(0, 23, at::kLong) * 5 % 97 + 1).unsqueeze(0)};
}

// Every path of `dir` resident and streamed: the same bits, one streamed layer resident at a time.
void expect_streamed_equals_resident(const std::filesystem::path& dir) {
  const auto resident = load_model(dir);
  const auto stream = load_model(dir, streamed());
  EXPECT_TRUE(stream.streams_layers());
  EXPECT_EQ(stream.resident_layers(), 0);
  EXPECT_THROW(stream.layers(), c10::Error);
  EXPECT_EQ(resident.resident_layers(), resident.config().num_hidden_layers);

  std::vector<SequenceRun> runs;
  std::vector<at::Tensor> expected;
  std::map<std::string, at::Tensor> resident_captures, layer_major_captures, streamed_captures;
  for (const auto& ids : prompts()) {
    expected.push_back(resident.forward(ids, [&](const std::string& name, const at::Tensor& t) {
      if (ids.size(1) == 23) resident_captures[name] = t;
    }));
    expect_same_bits(stream.forward(ids), expected.back(), "forward, " + std::to_string(ids.size(1)) + " tokens");
    EXPECT_EQ(stream.resident_layers(), 1);
    runs.push_back({ids, {}, kernels::MixerForm::chunked, {}});
  }
  runs.back().capture = [&](const std::string& name, const at::Tensor& t) { layer_major_captures[name] = t; };
  // The 23-token prompt again as prefill() would feed it: 10 tokens, 1 (a step), 12.
  const auto& longest = runs.back().ids;
  runs.push_back({longest, {10, 1, 12}, kernels::MixerForm::chunked, {}});
  auto state = resident.new_state();
  const auto pieces = at::stack({resident.prefill(longest.narrow(1, 0, 10), state), resident.step(longest.select(1, 10), state),
                                 resident.prefill(longest.narrow(1, 11, 12), state)},
                                1);

  const auto layer_major = resident.run_layer_major(runs);
  for (std::size_t n = 0; n < expected.size(); ++n) expect_same_bits(layer_major[n], expected[n], "run_layer_major, prompt " + std::to_string(n));
  expect_same_bits(layer_major.back(), pieces, "run_layer_major pieces vs prefill, step, prefill");
  EXPECT_EQ(layer_major_captures.size(), resident_captures.size());
  for (const auto& [name, t] : resident_captures) expect_same_bits(layer_major_captures.at(name), t, "capture " + name);

  runs[expected.size() - 1].capture = [&](const std::string& name, const at::Tensor& t) { streamed_captures[name] = t; };
  const auto streamed_layer_major = stream.run_layer_major(runs);
  for (std::size_t n = 0; n < runs.size(); ++n)
    expect_same_bits(streamed_layer_major[n], layer_major[n], "streamed run_layer_major, run " + std::to_string(n));
  for (const auto& [name, t] : resident_captures) expect_same_bits(streamed_captures.at(name), t, "streamed capture " + name);
  EXPECT_EQ(stream.resident_layers(), 1);

  // Greedy decoding through the per-layer state a streamed layer makes when first reached.
  auto streamed_state = stream.new_state();
  expect_same_bits(stream.prefill(longest.narrow(1, 0, 10), streamed_state), pieces.select(1, 0), "streamed prefill");
  expect_same_bits(stream.step(longest.select(1, 10), streamed_state), pieces.select(1, 1), "streamed step");
  auto resident_state = resident.new_state();
  resident.prefill(longest.narrow(1, 0, 10), resident_state);
  resident.step(longest.select(1, 10), resident_state);
  EXPECT_EQ(streamed_state.bytes(), resident_state.bytes()) << "the streamed states hold what the resident ones hold";
  EXPECT_EQ(stream.resident_layers(), 1);
}

TEST(StreamedLayers, AMoeSourceComputesTheResidentBitsOnEveryPath) {
  expect_streamed_equals_resident(test::fixtures_dir() / "tiny-qwen3-moe");
}

// gpt-oss: each expert copied in as its slices of the four stacks when a token first picks it (the streamed layer holds
// no expert list), attention sinks with the attention.
TEST(StreamedLayers, GptOssStackedExpertsAndSinksComputeTheResidentBits) {
  expect_streamed_equals_resident(test::fixtures_dir() / "tiny-gpt-oss");
  const auto stream = load_model(test::fixtures_dir() / "tiny-gpt-oss", streamed());
  EXPECT_THROW(stream.layer(0).routed_mlp.experts(), c10::Error);
}

// A conversion with a kept softmax layer and a window: the recipe's tensors are copied in with their layer.
TEST(StreamedLayers, AConversionComputesTheResidentBitsOnEveryPath) {
  test::TempDir dir;
  expect_streamed_equals_resident(convert_fixture(dir, "tiny-gemma3", "lolcats", {{"softmax_layers", {1}}, {"window", 16}}));
}

// 24 layers (deep-llama, trained, outlier channels): the bits do not depend on depth, and still one layer is resident.
TEST(StreamedLayers, ADeepConversionComputesTheResidentBitsOnEveryPath) {
  test::TempDir dir;
  expect_streamed_equals_resident(convert_fixture(dir, "deep-llama", "gated-deltanet", {{"softmax_layers", {0, 12}}}));
}

// verify with streamed layers: L2 reproduces the bits recorded from the resident model, and every row of the
// report has the resident verify's value.
TEST(StreamedLayers, VerifyReportsTheResidentVerifysRows) {
  test::TempDir dir;
  const auto source = test::fixtures_dir() / "tiny-qwen3-moe";
  const auto out = convert_fixture(dir, "tiny-qwen3-moe", "lolcats", {{"softmax_layers", {1}}, {"window", 16}});
  const auto resident = record_and_verify(out, source);
  ASSERT_TRUE(resident.passed()) << resident.table();
  VerifyOptions options;
  options.model = out;
  options.source = source;
  options.load = streamed();
  const auto stream = verify_model(options);
  EXPECT_TRUE(stream.passed()) << stream.table();
  EXPECT_EQ(test::report_row(stream, "reload reproduces the recorded logits").name,
            "reload reproduces the recorded logits (bit-identical)");
  ASSERT_EQ(stream.checks.size(), resident.checks.size());
  for (std::size_t i = 0; i < stream.checks.size(); ++i) {
    EXPECT_EQ(stream.checks[i].name, resident.checks[i].name);
    EXPECT_EQ(stream.checks[i].value, resident.checks[i].value) << stream.checks[i].name;
    EXPECT_EQ(stream.checks[i].detail, resident.checks[i].detail) << stream.checks[i].name;
  }
  EXPECT_EQ(stream.layers, resident.layers);
  EXPECT_EQ(stream.layer_forms, resident.layer_forms);
}

// A PEFT adapter attaches to resident layers only: streaming it is refused by name, before any weight is read.
TEST(StreamedLayers, AnAttachedAdapterIsRefused) {
  test::TempDir dir;
  const auto out = convert_fixture(dir, "tiny-llama", "lolcats");
  std::filesystem::create_directories(out / kPeftAdapterDir);
  test::write_file(out / kPeftAdapterDir / kPeftConfigFile, "{}");
  try {
    load_model(out, streamed());
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("stream_layers"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace linearize
