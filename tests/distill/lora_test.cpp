// LoRA layers: PEFT's init and scaling, the forward formula, dropout only on the LoRA path in training,
// gradients only into A and B, the fp32 merge and its finiteness check, and the PEFT adapter files.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include <nlohmann/json.hpp>

#include "converter/model/lora.h"

#include <ATen/core/grad_mode.h>
#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

at::Generator seeded(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// A LoRA layer with a random (non-zero) B, so the LoRA path contributes.
LoraLinear random_lora(const LoraOptions& options, std::int64_t out = 12, std::int64_t in = 20) {
  auto g = seeded(3);
  LoraLinear lora("model.layers.0.self_attn.q_proj", at::randn({out, in}, g), at::randn({out}, g), options, g);
  at::NoGradGuard no_grad;
  lora.b().normal_(0, 1, g);
  return lora;
}

TEST(LoraTest, ScaleIsAlphaOverROrOverSqrtR) {
  EXPECT_DOUBLE_EQ(lora_scale({8, 16, 0, false}), 2.0);
  EXPECT_DOUBLE_EQ(lora_scale({16, 16, 0, true}), 4.0);
}

TEST(LoraTest, InitialisesLikePeftSoAFreshAdapterChangesNothing) {
  const std::int64_t in = 400;
  auto g = seeded(1);
  const LoraLinear lora("m.q_proj", at::randn({30, in}, g), at::Tensor(), {8, 16, 0, false}, g);
  EXPECT_EQ(lora.a().sizes(), (at::IntArrayRef{8, in}));
  EXPECT_EQ(lora.b().sizes(), (at::IntArrayRef{30, 8}));
  EXPECT_TRUE(lora.b().eq(0).all().item<bool>());
  // U(-1/sqrt(in), 1/sqrt(in)): inside the bound, standard deviation bound/sqrt(3). With 3200 draws the
  // sample std has a relative standard error of about 1/sqrt(2 * 3200 * 0.8) = 1.4%; 6% is over 4 sigma.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  EXPECT_LE(lora.a().abs().max().item<double>(), bound);
  EXPECT_NEAR(lora.a().std().item<double>(), bound / std::sqrt(3.0), 0.06 * bound / std::sqrt(3.0));
  EXPECT_TRUE(lora.a().requires_grad() && lora.b().requires_grad());
  EXPECT_FALSE(lora.weight().requires_grad());

  const auto x = at::randn({2, 5, in}, g);
  EXPECT_TRUE(at::equal(lora.forward(x, true), at::linear(x, lora.weight())));  // B = 0: exactly the base
}

TEST(LoraTest, ForwardIsBasePlusScaledLowRankPath) {
  const auto lora = random_lora({4, 8, 0, false});
  auto g = seeded(5);
  const auto x = at::randn({3, 7, 20}, g);
  const auto expected = at::linear(x, lora.weight(), lora.bias()) + 2.0 * at::matmul(at::matmul(x, lora.a().t()), lora.b().t());
  // fp32, sums of 20 and 4 products of O(1) terms: reassociation differs by a few ulp of the O(10) outputs.
  EXPECT_TRUE(at::allclose(lora.forward(x, false), expected, 1e-5, 1e-5));
  // The merged weight gives the same layer.
  EXPECT_TRUE(at::allclose(at::linear(x, lora.merge(), lora.bias()), lora.forward(x, false), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(lora.merge(), lora.weight() + 2.0 * at::matmul(lora.b(), lora.a()), 1e-6, 1e-6));
}

TEST(LoraTest, DropoutActsOnlyOnTheLoraInputInTraining) {
  const auto lora = random_lora({4, 8, 0.5, false});
  auto g = seeded(6);
  const auto x = at::randn({4, 9, 20}, g);
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal(lora.forward(x, false), lora.forward(x, false)));
  at::manual_seed(11);
  const auto first = lora.forward(x, true);
  at::manual_seed(11);
  EXPECT_TRUE(at::equal(lora.forward(x, true), first));  // drawn from the global generator: reproducible
  EXPECT_FALSE(at::allclose(first, lora.forward(x, false)));
  // Undo the LoRA path by hand: what is left is the base layer, untouched by dropout. The mask is the one
  // at::dropout draws after the same seed (inverted dropout scales kept inputs by 1 / (1 - p)).
  at::manual_seed(11);
  const auto dropped = at::dropout(x, 0.5, true);
  const auto lora_part = 2.0 * at::matmul(at::matmul(dropped, lora.a().t()), lora.b().t());
  EXPECT_TRUE(at::allclose(first - lora_part, at::linear(x, lora.weight(), lora.bias()), 1e-4, 1e-4));
}

TEST(LoraTest, GradientsReachOnlyAAndB) {
  const auto lora = random_lora({4, 8, 0, false});
  const auto x = at::randn({2, 3, 20}, seeded(7)).requires_grad_(false);
  lora.forward(x, true).square().sum().backward();
  EXPECT_TRUE(lora.a().grad().defined() && lora.a().grad().abs().sum().item<double>() > 0);
  EXPECT_TRUE(lora.b().grad().defined() && lora.b().grad().abs().sum().item<double>() > 0);
  EXPECT_FALSE(lora.weight().grad().defined());
}

TEST(LoraTest, Bf16BaseKeepsItsDtypeAndMergesInFp32) {
  auto g = seeded(8);
  const LoraLinear lora("m.v_proj", at::randn({6, 10}, g).to(at::kBFloat16), at::Tensor(), {2, 4, 0, false}, g);
  EXPECT_EQ(lora.a().scalar_type(), at::kFloat);
  EXPECT_EQ(lora.forward(at::randn({1, 2, 10}, g).to(at::kBFloat16), false).scalar_type(), at::kBFloat16);
  EXPECT_EQ(lora.merge().scalar_type(), at::kFloat);
}

TEST(LoraTest, MergeRefusesNonFiniteValuesNamingTheModule) {
  const auto lora = random_lora({4, 8, 0, false});
  {
    at::NoGradGuard no_grad;
    lora.b()[2][1] = INFINITY;
  }
  try {
    lora.merge();
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    // Row 2 of B times A gives inf/-inf on every input column: 20 values.
    EXPECT_EQ(std::string(e.what()), "model.layers.0.self_attn.q_proj.weight: merging LoRA gives 20 non-finite values (NaN/Inf); not merged "
                                     "(check model.layers.0.self_attn.q_proj.lora_A.weight and model.layers.0.self_attn.q_proj.lora_B.weight)");
  }
}

class PeftAdapterTest : public testing::Test {
 protected:
  PeftAdapter sample() const {
    PeftAdapter adapter;
    adapter.config = {4, 8, 0.05, true, {"q_proj", "v_proj"}, "tests/fixtures/tiny-llama"};
    auto g = seeded(9);
    for (const char* path : {"model.layers.1.self_attn.v_proj", "model.layers.0.self_attn.q_proj"}) {
      adapter.modules.push_back({path, at::randn({4, 16}, g), at::randn({8, 4}, g)});
    }
    return adapter;
  }
  std::string error_after(const std::function<void()>& edit) {
    write_peft_adapter(dir_.path(), sample());
    edit();
    try {
      read_peft_adapter(dir_.path());
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  }
  void edit_config(const std::function<void(nlohmann::json&)>& change) {
    auto config = read_json_file(dir_ / kPeftConfigFile);
    change(config);
    test::write_file(dir_ / kPeftConfigFile, config.dump());
  }
  test::TempDir dir_;
};

TEST_F(PeftAdapterTest, RoundTripsWithPeftNamesAndConfigKeys) {
  const auto adapter = sample();
  write_peft_adapter(dir_.path(), adapter);
  const auto config = read_json_file(dir_ / kPeftConfigFile);
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["bias"], "none");
  EXPECT_TRUE(config["lora_alpha"].is_number_integer());
  EXPECT_EQ(config["target_modules"], (nlohmann::json{"q_proj", "v_proj"}));
  const auto file = SafetensorsFile::open(dir_ / kPeftWeightsFile);
  EXPECT_NE(file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), nullptr);
  EXPECT_NE(file.find("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"), nullptr);

  const auto read = read_peft_adapter(dir_.path());
  EXPECT_EQ(read.config.r, 4);
  EXPECT_EQ(read.config.lora_alpha, 8.0);
  EXPECT_EQ(read.config.lora_dropout, 0.05);
  EXPECT_TRUE(read.config.use_rslora);
  EXPECT_EQ(read.config.target_modules, adapter.config.target_modules);
  EXPECT_EQ(read.config.base_model_name_or_path, "tests/fixtures/tiny-llama");
  ASSERT_EQ(read.modules.size(), 2u);
  EXPECT_EQ(read.modules[0].path, "model.layers.0.self_attn.q_proj");  // sorted by path
  EXPECT_TRUE(at::equal(read.modules[0].a, adapter.modules[1].a));
  EXPECT_TRUE(at::equal(read.modules[1].b, adapter.modules[0].b));
}

TEST_F(PeftAdapterTest, BadAdaptersNameFileAndField) {
  const std::string config = (dir_ / kPeftConfigFile).string(), weights = (dir_ / kPeftWeightsFile).string();
  EXPECT_EQ(error_after([&] { edit_config([](auto& c) { c["peft_type"] = "IA3"; }); }), config + ": peft_type: 'IA3' is not supported (only LORA)");
  EXPECT_EQ(error_after([&] { edit_config([](auto& c) { c["use_dora"] = true; }); }), config + ": use_dora: DoRA adapters are not supported");
  EXPECT_EQ(error_after([&] { edit_config([](auto& c) { c["rank_pattern"] = {{"q_proj", 2}}; }); }),
            config + ": rank_pattern: per-layer rank/alpha patterns are not supported");
  EXPECT_EQ(error_after([&] { edit_config([](auto& c) { c["r"] = 8; }); }),
            weights + ": base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight: expected shape [r, in] with r = 8");
  EXPECT_EQ(error_after([&] {
              write_safetensors(weights, {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", sample().modules[0].a}});
            }),
            weights + ": base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight: missing (LoRA tensors come in A/B pairs)");
  EXPECT_EQ(error_after([&] { write_safetensors(weights, {{"model.layers.0.q_proj.weight", at::zeros({4, 4})}}); }),
            weights + ": model.layers.0.q_proj.weight: not a LoRA tensor (expected base_model.model.<module>.lora_A.weight or .lora_B.weight)");
}

}  // namespace
}  // namespace linearize
