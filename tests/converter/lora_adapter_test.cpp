// LoRA adapters inside the decoder (converter/model/linear_adapter.h, lora.h): on every projection of a
// source model and of a converted one (whose recipe mixer reuses the source attention's projections),
// the adapted model computes what the model with the adapters merged into its weights computes; a PEFT
// directory attaches the same adapters back; a module the model lacks is refused naming the file.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "formats/error.h"
#include "formats/peft_adapter.h"
#include "test_util.h"

namespace linearize {
namespace {

const std::vector<std::string> kEveryProjection = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

double relative(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().item<double>();
}

// Fresh adapters with B drawn too (a fresh B is zero and would change nothing).
std::vector<std::shared_ptr<LoraLinear>> random_adapters(CausalLM& model, std::uint64_t seed) {
  at::manual_seed(seed);
  auto adapters = attach_lora(model, kEveryProjection, {4, 8, 0.0, false});
  at::NoGradGuard no_grad;
  for (const auto& lora : adapters) lora->b().normal_(0, 0.05);
  return adapters;
}

class LoraInModel : public testing::TestWithParam<const char*> {
 protected:
  CausalLM load() {
    const std::string recipe = GetParam();
    if (recipe == "source") return load_model(test::fixtures_dir() / "tiny-llama");
    ConvertOptions convert;
    convert.source = test::fixtures_dir() / "tiny-llama";
    convert.out = dir_ / recipe;
    convert.recipe = recipe;
    if (!std::filesystem::exists(convert.out)) convert_checkpoint(convert);
    return load_model(dir_ / recipe);
  }
  test::TempDir dir_;
};

TEST_P(LoraInModel, AdaptersOnEveryProjectionEqualTheMergedWeights) {
  at::NoGradGuard no_grad;
  CausalLM model = load();
  const auto ids = at::randint(0, model.config().vocab_size, {2, 40}, at::kLong);
  const auto base = model.forward(ids);
  const auto adapters = random_adapters(model, 7);
  ASSERT_EQ(adapters.size(), model.layers().size() * kEveryProjection.size());
  const auto adapted = model.forward(ids);
  // B ~ N(0, 0.05^2) on every projection moves the logits by O(0.1-1); a hook that is not called leaves 0.
  EXPECT_GT(relative(adapted, base), 1e-2);

  for (std::size_t i = 0; i < model.layers().size(); ++i) {
    auto& layer = model.layers()[i];
    for (const auto& name : kEveryProjection) {
      const auto projection = *find_projection(name);
      const auto& lora = adapters[i * kEveryProjection.size() + static_cast<std::size_t>(projection)];
      const bool attention = projection <= Projection::o;
      ASSERT_EQ(lora->path(), "model.layers." + std::to_string(i) + (attention ? ".self_attn." : ".mlp.") + name);
      layer.weight(projection).copy_(lora->merge());  // views: this writes the fused matrices
      layer.adapters->attach(projection, nullptr);
    }
  }
  // fp32: W x + s B (A x) against (W + s B A) x reassociates sums of 64-172 products per projection; the
  // differences (a few ulp each) pass through 2 layers and lm_head. 1e-5 of the largest logit is ~50x that
  // and 1000x below the effect of the adapters checked above.
  EXPECT_LE(relative(model.forward(ids), adapted), 1e-5);
}

TEST_P(LoraInModel, PeftDirectoryAttachesTheSameAdapters) {
  at::NoGradGuard no_grad;
  CausalLM model = load();
  const auto ids = at::randint(0, model.config().vocab_size, {1, 33}, at::kLong);
  const auto adapters = random_adapters(model, 11);
  const auto adapted = model.forward(ids);
  PeftAdapter adapter;
  adapter.config = {4, 8, 0.0, false, kEveryProjection, "model"};
  for (const auto& lora : adapters) adapter.modules.push_back(lora->to_peft());
  write_peft_adapter(dir_ / "adapter", adapter);

  CausalLM reloaded = load();
  const auto attached = attach_peft_adapter(reloaded, dir_ / "adapter");
  EXPECT_EQ(attached.size(), adapters.size());
  // The same fp32 values and operations in the same order: bit-identical.
  EXPECT_TRUE(at::equal(reloaded.forward(ids), adapted));
}

std::string test_name(const testing::TestParamInfo<const char*>& param) {
  std::string name = param.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(Models, LoraInModel, testing::Values("source", "lolcats", "liger-gla", "supra"), test_name);

TEST(PeftAdapterAttach, ModuleTheModelLacksIsRefusedNamingTheFile) {
  test::TempDir dir;
  CausalLM model = load_model(test::fixtures_dir() / "tiny-llama");
  PeftAdapter adapter;
  adapter.config = {2, 4, 0.0, false, {"q_proj"}, "model"};
  const auto in = model.layers()[0].weight(Projection::q).size(1), out = model.layers()[0].weight(Projection::q).size(0);
  adapter.modules.push_back({"model.layers.9.self_attn.q_proj", at::zeros({2, in}), at::zeros({out, 2})});
  write_peft_adapter(dir / "adapter", adapter);
  try {
    attach_peft_adapter(model, dir / "adapter");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), (dir / "adapter" / kPeftWeightsFile).string());
    EXPECT_EQ(e.field(), "model.layers.9.self_attn.q_proj");
  }
}

}  // namespace
}  // namespace linearize
