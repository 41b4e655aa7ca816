// A green verify must mean something: each test plants one fault in one form of one layer of a real
// recipe's mixer (a test-only recipe wrapping the registered one) and requires verify to fail the check
// that covers that form, naming the layer. The faults are the ones that slip through when a form is
// written twice: a window off by one in decode only, q's feature map applied to k in the chunked form
// only, a different decay in decode only; and a LoRA scale changed on reload.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <iostream>

#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "converter/verify.h"
#include "formats/peft_adapter.h"
#include "conversion_test_util.h"

namespace linearize {
namespace {

using kernels::MixerForm;

// The registered mixer, except that calls of form `faulty_form` go to a second mixer built with the
// fault (both from the same source attention and tensors, so the states are interchangeable).
class PlantedMixer final : public TokenMixer {
 public:
  PlantedMixer(std::unique_ptr<TokenMixer> correct, std::unique_ptr<TokenMixer> faulty, MixerForm faulty_form)
      : correct_(std::move(correct)), faulty_(std::move(faulty)), faulty_form_(faulty_form) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    const auto form = state && x.size(1) == 1 ? MixerForm::recurrent : call.form;
    return (form == faulty_form_ ? faulty_ : correct_)->forward(x, start, state, call);
  }
  std::unique_ptr<MixerState> new_state() const override { return correct_->new_state(); }
  std::string kind() const override { return correct_->kind(); }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override { return correct_->trainable(); }

 private:
  std::unique_ptr<TokenMixer> correct_, faulty_;
  MixerForm faulty_form_;
};

// How a fault changes the faulty mixer's parameters or tensors.
using Fault = std::function<void(nlohmann::json& params, LayerTensors& tensors)>;

struct PlantedBug {
  const char* name;
  const char* recipe;
  MixerForm form;
  Fault fault;
  const char* failing_row;  // the L1 row that must fail
};

// The registered recipe `bug.recipe`, with `bug` planted in `layer` only. New tensors start from their
// init plus seeded noise, so q's and k's maps differ (at init they are the same truncated identity).
std::string register_planted(const PlantedBug& bug, std::int64_t layer) {
  Recipe planted = find_recipe(bug.recipe, "test", "recipe");
  const std::string name = std::string("planted-") + bug.name + "-" + bug.recipe + "-" + std::to_string(layer);
  for (const auto& r : registered_recipes())
    if (r.name == name) return name;
  planted.name = name;
  const auto base_tensors = planted.new_tensors;
  planted.new_tensors = [base_tensors](const LayerContext& ctx) {
    auto tensors = base_tensors(ctx);
    for (auto& t : tensors) {
      const auto init = t.init;
      const auto seed = static_cast<std::uint64_t>(ctx.layer) * 131 + std::hash<std::string>{}(t.name);
      t.init = [init, seed] {
        auto value = init();
        auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
        return value + 0.2 * at::randn(value.sizes(), generator, value.options());
      };
    }
    return tensors;
  };
  const auto make = planted.make_mixer;
  planted.make_mixer = [make, bug, layer](const LayerContext& ctx, const SoftmaxAttentionMixer& source,
                                          const LayerTensors& tensors) -> std::unique_ptr<TokenMixer> {
    auto correct = make(ctx, source, tensors);
    if (ctx.layer != layer) return correct;
    auto params = ctx.params;
    auto faulty_tensors = tensors;
    bug.fault(params, faulty_tensors);
    return std::make_unique<PlantedMixer>(std::move(correct), make(LayerContext{ctx.config, ctx.layer, params}, source, faulty_tensors),
                                          bug.form);
  };
  register_recipe(std::move(planted));
  return name;
}

using test::report_row;

// One key too many in the window (the kernel refuses a cache larger than its window, so not one too few).
const Fault kWindowOffByOne = [](nlohmann::json& p, LayerTensors&) { p["window"] = p["window"].get<std::int64_t>() + 1; };
const Fault kQueryMapOnKeys = [](nlohmann::json&, LayerTensors& t) { t["feature_map_k.weight"] = t.at("feature_map_q.weight"); };
const Fault kOtherDecay = [](nlohmann::json& p, LayerTensors&) { p["gate_normalizer"] = p["gate_normalizer"].get<double>() * 0.9; };

void PrintTo(const PlantedBug& bug, std::ostream* os) { *os << bug.name << " in " << bug.recipe; }

class PlantedBugs : public testing::TestWithParam<PlantedBug> {};

// tiny-qwen2 (3 layers), the fault in layer 1; the window 16 (< the 64-token chunk) so decode passes it
// within the built-in prompts' chunk-edge lengths too.
TEST_P(PlantedBugs, VerifyFailsTheCoveringRowAndNamesTheLayer) {
  const auto& bug = GetParam();
  test::TempDir dir;
  ConvertOptions options;
  options.source = test::fixtures_dir() / "tiny-qwen2";
  options.out = dir / "out";
  options.recipe = register_planted(bug, 1);
  if (std::string(bug.recipe) != "hedgehog") options.params = {{"window", 16}};
  convert_checkpoint(options);
  const auto report = record_and_verify(options.out, options.source);
  EXPECT_FALSE(report.passed()) << report.table();
  const auto& failing = report_row(report, bug.failing_row);
  EXPECT_FALSE(failing.passed) << report.table();
  EXPECT_EQ(failing.detail.rfind("worst layer 1 ", 0), 0u) << failing.detail;
  std::cout << "planted " << bug.name << " in " << bug.recipe << ": " << failing.name << " = " << failing.value << " ("
            << failing.detail << ")\n";
  // A fault is not rounding: it is orders of magnitude over the fp64 bound.
  EXPECT_GT(failing.value, 1e4 * failing.tolerance) << report.table();
}

std::string bug_name(const testing::TestParamInfo<PlantedBug>& info) {
  std::string name = std::string(info.param.name) + "_" + info.param.recipe;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    Faults, PlantedBugs,
    testing::Values(PlantedBug{"window-off-by-one-in-decode", "liger-gla", MixerForm::recurrent, kWindowOffByOne, "per layer fp64: recurrent"},
                    PlantedBug{"window-off-by-one-in-decode", "lolcats", MixerForm::recurrent, kWindowOffByOne, "per layer fp64: recurrent"},
                    PlantedBug{"query-map-on-keys-in-chunked", "hedgehog", MixerForm::chunked, kQueryMapOnKeys, "per layer fp64: parallel"},
                    PlantedBug{"query-map-on-keys-in-chunked", "lolcats", MixerForm::chunked, kQueryMapOnKeys, "per layer fp64: parallel"},
                    PlantedBug{"other-decay-in-decode", "liger-gla", MixerForm::recurrent, kOtherDecay, "per layer fp64: recurrent"},
                    PlantedBug{"other-decay-in-parallel", "liger-gla", MixerForm::parallel, kOtherDecay, "per layer fp64: parallel"}),
    bug_name);

// A LoRA scale that changes between export and reload (alpha edited in adapter_config.json): the reloaded
// model no longer reproduces the logits recorded at export, and L2 fails.
TEST(PlantedBugsLora, ScaleChangedOnReloadFailsTheReload) {
  test::TempDir dir;
  ConvertOptions options;
  options.source = test::fixtures_dir() / "tiny-llama";
  options.out = dir / "out";
  options.recipe = "lolcats";
  convert_checkpoint(options);
  {
    CausalLM model = load_model(options.out);
    at::manual_seed(5);
    const auto adapters = attach_lora(model, {"q_proj", "v_proj"}, {4, 8, 0.0, false});
    at::NoGradGuard no_grad;
    PeftAdapter adapter;
    adapter.config = {4, 8, 0.0, false, {"q_proj", "v_proj"}, "model"};
    for (const auto& lora : adapters) {
      lora->b().normal_(0, 0.05);
      adapter.modules.push_back(lora->to_peft());
    }
    write_peft_adapter(options.out / kPeftAdapterDir, adapter);
  }
  const auto clean = record_and_verify(options.out, options.source);
  EXPECT_TRUE(report_row(clean, "reload reproduces").passed) << clean.table();
  EXPECT_TRUE(report_row(clean, "per layer fp64: recurrent").passed) << "the fp64 rows run the adapters in fp64 too\n" << clean.table();

  const auto config_path = options.out / kPeftAdapterDir / kPeftConfigFile;
  auto config = nlohmann::json::parse(test::read_file(config_path));
  config["lora_alpha"] = 16;
  test::write_file(config_path, config.dump());
  VerifyOptions verify;
  verify.model = options.out;
  const auto reloaded = verify_model(verify);
  EXPECT_FALSE(report_row(reloaded, "reload reproduces").passed) << reloaded.table();
  EXPECT_FALSE(reloaded.passed());
}

}  // namespace
}  // namespace linearize
