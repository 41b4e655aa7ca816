// RoPE against transformers' own frequencies for every variant (tests/fixtures/rope/make_rope_vectors.py),
// read through our config reader, and the rotation itself against its defining formula.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "converter/model_config.h"
#include "formats/safetensors.h"
#include "kernels/rope.h"
#include "test_util.h"

namespace linearize {
namespace {

TEST(Rope, EveryVariantMatchesTransformersFrequencies) {
  const auto vectors = SafetensorsFile::open(test::fixtures_dir() / "rope" / "rope_vectors.safetensors");
  ASSERT_GE(vectors.metadata().size(), 12u);
  for (const auto& [name, meta] : vectors.metadata()) {
    if (name == "format") continue;
    const auto spec = nlohmann::json::parse(meta);
    test::TempDir dir;
    test::write_file(dir / "config.json", spec["config"].dump());
    const auto cfg = load_model_config(dir / "config.json");
    const auto freqs = kernels::rope_frequencies(cfg.rope, cfg.head_dim, cfg.max_position_embeddings,
                                                 spec["seq_len"].get<std::int64_t>());
    const auto expected = vectors.tensor(name + ".inv_freq");
    ASSERT_EQ(freqs.inv_freq.sizes(), expected.sizes()) << name;
    // Both sides run the same fp32 operations (pow, division, where); a few ulps (2^-24 each) may
    // separate vectorised and scalar pow. 1e-6 relative allows that; a wrong variant or parameter (a
    // factor not applied, a ramp shifted by one dim) changes some frequency by far more than 1e-3.
    EXPECT_LE(((freqs.inv_freq - expected).abs() / expected).max().item<double>(), 1e-6) << name;
    EXPECT_NEAR(freqs.attention_scaling, vectors.tensor(name + ".attention_scaling").item<double>(), 1e-12) << name;
  }
}

TEST(Rope, RotatesEachHalfSplitPairByPositionTimesFrequency) {
  // x' = x cos(p w_i) + rotate_half(x) sin(p w_i): channel i pairs with i + d/2 (HF layout, no interleave).
  const std::int64_t d = 8;
  RopeConfig rope;
  const auto freqs = kernels::rope_frequencies(rope, d, 128);
  const auto x = at::randn({1, 2, 5, d}, at::kDouble);
  const auto positions = at::arange(3, 8, at::kLong);
  const auto cs = kernels::rope_cos_sin(freqs, positions, at::kDouble);
  const auto y = kernels::apply_rope(x, cs);
  for (std::int64_t t = 0; t < 5; ++t) {
    for (std::int64_t i = 0; i < d / 2; ++i) {
      const double angle = static_cast<double>(3 + t) * freqs.inv_freq[i].item<double>();
      const auto a = x.select(2, t).select(-1, i), b = x.select(2, t).select(-1, i + d / 2);
      // cos/sin are computed in fp32 as transformers does, so compare at fp32 precision.
      EXPECT_TRUE(y.select(2, t).select(-1, i).allclose(a * std::cos(angle) - b * std::sin(angle), 1e-5, 1e-5));
      EXPECT_TRUE(y.select(2, t).select(-1, i + d / 2).allclose(b * std::cos(angle) + a * std::sin(angle), 1e-5, 1e-5));
    }
  }
}

TEST(Rope, PartialRotaryLeavesTheTailChannelsAlone) {
  RopeConfig rope;
  rope.partial_rotary_factor = 0.5;
  const auto freqs = kernels::rope_frequencies(rope, 16, 128);
  ASSERT_EQ(freqs.inv_freq.size(0), 4);
  const auto x = at::randn({1, 1, 3, 16});
  const auto y = kernels::apply_rope(x, kernels::rope_cos_sin(freqs, at::arange(1, 4, at::kLong), at::kFloat));
  EXPECT_TRUE(y.narrow(-1, 8, 8).equal(x.narrow(-1, 8, 8)));
  EXPECT_FALSE(y.narrow(-1, 0, 8).allclose(x.narrow(-1, 0, 8)));
}

}  // namespace
}  // namespace linearize
