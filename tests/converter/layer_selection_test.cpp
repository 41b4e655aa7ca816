// softmax_layers: auto:N (converter/layer_selection.h) on the deep fixture, whose layers differ (outlier
// channels, attention sinks): the ranking measures what the real convert + load path computes, keeping the
// most sensitive layers beats keeping the least sensitive ones, and convert records what it chose.
#include <gtest/gtest.h>

#include <algorithm>

#include "conversion_test_util.h"
#include "converter/layer_selection.h"
#include "converter/next_token.h"
#include "formats/error.h"

namespace linearize {
namespace {

using test::convert_fixture;
using test::TempDir;

constexpr const char* kFixture = "deep-llama";
constexpr const char* kRecipe = "hedgehog";

// Mean KL(source || model) over the built-in prompts' positions, fp64, as rank_layers measures it.
double mean_kl(const std::filesystem::path& model_dir) {
  const auto source_dir = test::fixtures_dir() / kFixture;
  const auto source = load_model(source_dir);
  const auto model = load_model(model_dir);
  double sum = 0, positions = 0;
  for (const auto& p : builtin_verify_prompts(source_dir, source.config()).ids) {
    const auto ids = at::tensor(p, at::kLong).view({1, -1});
    const auto kl = kl_per_row(at::log_softmax(source.forward(ids)[0].to(at::kDouble), -1),
                               at::log_softmax(model.forward(ids)[0].to(at::kDouble), -1));
    sum += kl.sum().item<double>();
    positions += static_cast<double>(kl.size(0));
  }
  return sum / positions;
}

std::vector<LayerSensitivity> ranking() {
  LayerSelectionOptions options;
  options.source = test::fixtures_dir() / kFixture;
  options.recipe = kRecipe;
  return rank_layers(options);
}

TEST(LayerSelection, RanksEveryLayerByTheKlOfConvertingItAloneThroughConvertAndLoad) {
  const auto ranked = ranking();
  const auto layers = load_model_config(test::fixtures_dir() / kFixture / "config.json").num_hidden_layers;
  ASSERT_EQ(static_cast<std::int64_t>(ranked.size()), layers);
  for (std::size_t i = 1; i < ranked.size(); ++i) EXPECT_GE(ranked[i - 1].mean_kl, ranked[i].mean_kl);
  // The most sensitive layer converted alone, written and loaded back: the same model, the same prompts.
  std::vector<std::int64_t> others;
  for (std::int64_t i = 0; i < layers; ++i)
    if (i != ranked.front().layer) others.push_back(i);
  TempDir dir;
  const auto alone = convert_fixture(dir, kFixture, kRecipe, {{"softmax_layers", others}});
  // Same fp32 forwards on the same CPU, summed in fp64: only the KL's last digits may differ (1e-9 relative);
  // another layer's KL differs at the percent level.
  EXPECT_NEAR(mean_kl(alone), ranked.front().mean_kl, 1e-9 * ranked.front().mean_kl + 1e-12);
}

TEST(LayerSelection, KeepingTheMostSensitiveLayersBeatsLeastSensitiveEvenlySpacedAndFirstLastKeeps) {
  const auto ranked = ranking();
  const std::int64_t keep = 6;
  std::vector<LayerSensitivity> reversed(ranked.rbegin(), ranked.rend());
  TempDir dir;
  const auto best = dir / "most-sensitive";
  std::filesystem::rename(convert_fixture(dir, kFixture, kRecipe, {{"softmax_layers", "auto:6"}}), best);
  const auto config = load_model_config(best / "config.json");
  EXPECT_EQ(config.linearize["params"]["softmax_layers"].get<std::vector<std::int64_t>>(), most_sensitive(ranked, keep));
  EXPECT_EQ(config.linearize["layer_selection"]["keep"].get<std::int64_t>(), keep);
  EXPECT_EQ(config.linearize["layer_selection"]["ranking"].size(), ranked.size());
  const double kl_best = mean_kl(best);
  // The hand-made choices at the same N (issue 19): the least sensitive layers, evenly spaced ones, and the
  // first and last three.
  const std::int64_t layers = static_cast<std::int64_t>(ranked.size());
  std::vector<std::int64_t> even, ends{0, 1, 2, layers - 3, layers - 2, layers - 1};
  for (std::int64_t k = 0; k < keep; ++k) even.push_back((2 * k + 1) * layers / (2 * keep));
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> others{
      {"least-sensitive", most_sensitive(reversed, keep)}, {"evenly-spaced", even}, {"first-and-last", ends}};
  for (const auto& [name, kept] : others) {
    ASSERT_NE(kept, most_sensitive(ranked, keep)) << name;
    std::filesystem::rename(convert_fixture(dir, kFixture, kRecipe, {{"softmax_layers", kept}}), dir / name);
    const double kl = mean_kl(dir / name);
    EXPECT_LT(kl_best, kl) << "keeping the 6 most sensitive layers: KL " << kl_best << "; " << name << ": " << kl;
  }
}

TEST(LayerSelection, AutoOtherThanAutoNIsBadInputNamingTheField) {
  const auto config = load_model_config(test::fixtures_dir() / "tiny-llama" / "config.json");
  EXPECT_EQ(auto_softmax_layers(nlohmann::json::array({0}), config, "run.yaml"), std::nullopt);
  EXPECT_EQ(auto_softmax_layers("auto:2", config, "run.yaml"), 2);
  EXPECT_EQ(auto_softmax_layers("auto:0", config, "run.yaml"), 0);
  // Percentages of the fixture's 2 layers, to the nearest layer with halves up: 24 % is 0.48 layers, 25 % 0.5.
  EXPECT_EQ(auto_softmax_layers("auto:100%", config, "run.yaml"), 2);
  EXPECT_EQ(auto_softmax_layers("auto:50%", config, "run.yaml"), 1);
  EXPECT_EQ(auto_softmax_layers("auto:25%", config, "run.yaml"), 1);
  EXPECT_EQ(auto_softmax_layers("auto:24%", config, "run.yaml"), 0);
  EXPECT_EQ(auto_softmax_layers("auto:0%", config, "run.yaml"), 0);
  for (const char* bad : {"auto:", "auto:x", "auto:-1", "auto:3", "all", "auto:99999999999", "auto:%", "auto:101%",
                          "auto:50%%", "auto:5.5%", "auto:%50"}) {
    try {
      auto_softmax_layers(bad, config, "run.yaml");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.field(), "softmax_layers") << bad;
      EXPECT_NE(std::string(e.what()).find("run.yaml"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace linearize
