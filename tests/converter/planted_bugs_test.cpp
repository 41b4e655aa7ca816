// A green verify must mean something: each test plants one fault in one form of one layer of a real
// recipe's mixer (a test-only recipe wrapping the registered one) and requires verify to fail the check
// that covers that form, naming the layer. The faults are the ones that slip through when a form is
// written twice: a window off by one in decode only, q's feature map applied to k in the chunked form
// only, a different decay in decode only, the decay shifted by one step in decode, the chunked form
// leaving out the intra-chunk diagonal; and a LoRA scale changed on reload. Decay faults apply to the
// recipe with per-token decays (liger-gla; supra's is constant in time); the diagonal to the recipes whose
// linear branch sees each token's own key (liger-gla and hedgehog here; supra normalises its linear output
// inside the mixer, so the diagonal's share cannot be taken out from outside the kernel).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <iostream>

#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "converter/recipes/torch_mixer_ops.h"
#include "kernels/feature_maps.h"
#include "converter/verify.h"
#include "formats/peft_adapter.h"
#include "conversion_test_util.h"

namespace linearize {
namespace {

using kernels::MixerForm;

// The faulty form's output, computed from the correct mixer and the call.
using FaultyForward = std::function<at::Tensor(const TokenMixer& correct, const at::Tensor& x, std::int64_t start,
                                               MixerState* state, const MixerCall& call)>;

// The registered mixer, except that calls of form `faulty_form` go to `faulty`.
class PlantedMixer final : public TokenMixer {
 public:
  PlantedMixer(std::unique_ptr<TokenMixer> correct, FaultyForward faulty, MixerForm faulty_form)
      : correct_(std::move(correct)), faulty_(std::move(faulty)), faulty_form_(faulty_form) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    const auto form = state && x.size(1) == 1 ? MixerForm::recurrent : call.form;
    return form == faulty_form_ ? faulty_(*correct_, x, start, state, call) : correct_->forward(x, start, state, call);
  }
  std::unique_ptr<MixerState> new_state() const override { return correct_->new_state(); }
  std::string kind() const override { return correct_->kind(); }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override { return correct_->trainable(); }
  const SoftmaxAttentionMixer& source_attention() const override { return correct_->source_attention(); }

 private:
  std::unique_ptr<TokenMixer> correct_;
  FaultyForward faulty_;
  MixerForm faulty_form_;
};

// A fault: builds the faulty form of one layer from what the recipe's make_mixer receives.
using MakeMixer = decltype(Recipe::make_mixer);
using Fault = std::function<FaultyForward(const MakeMixer& make, const LayerContext& ctx, const SoftmaxAttentionMixer& source,
                                          const LayerTensors& tensors)>;

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
    return std::make_unique<PlantedMixer>(std::move(correct), bug.fault(make, ctx, source, tensors), bug.form);
  };
  register_recipe(std::move(planted));
  return name;
}

using test::report_row;

// A fault in the recipe's parameters or tensors: the faulty form is the recipe's mixer built with them
// changed (from the same source attention, so the states are interchangeable).
Fault changed_inputs(std::function<void(nlohmann::json& params, LayerTensors& tensors)> change) {
  return [change](const MakeMixer& make, const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors& tensors) {
    auto params = ctx.params;
    auto changed = tensors;
    change(params, changed);
    std::shared_ptr<TokenMixer> faulty = make(LayerContext{ctx.config, ctx.layer, params}, source, changed);
    return FaultyForward([faulty](const TokenMixer&, const at::Tensor& x, std::int64_t start, MixerState* state,
                                  const MixerCall& call) { return faulty->forward(x, start, state, call); });
  };
}

// One key too many in the window (the kernel refuses a cache larger than its window, so not one too few).
const Fault kWindowOffByOne = changed_inputs([](nlohmann::json& p, LayerTensors&) { p["window"] = p["window"].get<std::int64_t>() + 1; });
const Fault kQueryMapOnKeys = changed_inputs([](nlohmann::json&, LayerTensors& t) { t["feature_map_k.weight"] = t.at("feature_map_q.weight"); });
const Fault kOtherDecay = changed_inputs([](nlohmann::json& p, LayerTensors&) { p["gate_normalizer"] = p["gate_normalizer"].get<double>() * 0.9; });

// Liger-GLA's decode applying the previous token's decay: S_t = diag(a_{t-1}) S_{t-1} + phi(k_t) v_t^T instead
// of diag(a_t). Planted around the correct step: the carried state is first multiplied by a_{t-1} / a_t.
const Fault kDecayShiftedByOneStep = [](const MakeMixer&, const LayerContext& ctx, const SoftmaxAttentionMixer& source,
                                        const LayerTensors&) {
  const double normalizer = ctx.params.at("gate_normalizer").get<double>();
  // The previous step's log decay per state, with the position it was computed at.
  auto previous = std::make_shared<std::map<const MixerState*, std::pair<std::int64_t, at::Tensor>>>();
  return FaultyForward([source, normalizer, previous](const TokenMixer& correct, const at::Tensor& x, std::int64_t start,
                                                      MixerState* state, const MixerCall& call) {
    if (!state) return correct.forward(x, start, state, call);
    const auto log_decay = at::log_sigmoid(recipes::at_least_fp32(source.project_heads(x).k)) / normalizer;  // [B,1,Hkv,D]
    auto& linear = static_cast<recipes::RecipeMixerState*>(state)->hybrid.linear;
    const auto it = previous->find(state);
    if (it != previous->end() && it->second.first == start - 1 && !linear.empty())
      linear.kv = linear.kv * at::exp(it->second.second - log_decay).squeeze(1).unsqueeze(-1);  // [B,Hkv,D,1]
    (*previous)[state] = {start, log_decay};
    return correct.forward(x, start, state, call);
  });
};

// The chunked form leaving out each token's own key (a strictly lower-triangular mask inside a chunk).
// Liger-GLA: the linear branch's diagonal term is phi(q_t).phi(k_t) v_t (the decay is exp(0) there),
// weighted 0.5 in the output y; taken out of the correct y before the output projection.
const Fault kLigerMissingDiagonal = [](const MakeMixer&, const LayerContext&, const SoftmaxAttentionMixer& source, const LayerTensors&) {
  return FaultyForward([source](const TokenMixer& correct, const at::Tensor& x, std::int64_t start, MixerState* state,
                                const MixerCall& call) {
    at::Tensor y;
    correct.forward(x, start, state, MixerCall{[&y](const std::string& name, const at::Tensor& t) {
                                                 if (names::is_capture(name, names::MixerCapture::y)) y = t;
                                               },
                                               call.scope, call.form});
    const auto h = source.project_heads(x);
    const std::int64_t heads = source.shape().heads;
    const auto phi_q = kernels::softmax_d(recipes::at_least_fp32(h.q));
    const auto phi_k = recipes::repeat_heads(kernels::softmax_d(recipes::at_least_fp32(h.k)), heads);
    const auto diagonal = (phi_q * phi_k).sum(-1, /*keepdim=*/true) * recipes::repeat_heads(h.v, heads);
    return source.project_output((y - 0.5 * diagonal).to(x.scalar_type()));
  });
};

// Hedgehog (normalised): without its own key, token t's output is (o_t - a_tt v_t) / (1 - a_tt), a_tt the
// normalised weight of the diagonal (attention_weights), and 0 where a_tt = 1. One call from the start only (a_tt needs the
// whole normaliser, which a carried state hides): the form the parallel row compares.
const Fault kHedgehogMissingDiagonal = [](const MakeMixer&, const LayerContext&, const SoftmaxAttentionMixer& source, const LayerTensors&) {
  return FaultyForward([source](const TokenMixer& correct, const at::Tensor& x, std::int64_t start, MixerState* state,
                                const MixerCall& call) {
    if (state || start != 0) return correct.forward(x, start, state, call);
    at::Tensor o;
    correct.forward(x, start, state, MixerCall{[&o](const std::string& name, const at::Tensor& t) {
                                                 if (names::is_capture(name, names::MixerCapture::o_lin)) o = t;
                                               },
                                               call.scope, call.form});
    const auto a = at::diagonal(correct.attention_weights(x), 0, -2, -1).transpose(1, 2).unsqueeze(-1);  // [B,T,H,1]
    const auto v = recipes::repeat_heads(source.project_heads(x).v, source.shape().heads);
    // The first token has nothing but its own key: its normaliser is 0, and the kernel's eps makes it 0.
    const auto without = at::where(a < 1, (o - a * v) / (1 - a), at::zeros_like(o));
    return source.project_output(without.to(x.scalar_type()));
  });
};
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
                    PlantedBug{"decay-shifted-by-one-step-in-decode", "liger-gla", MixerForm::recurrent, kDecayShiftedByOneStep, "per layer fp64: recurrent"},
                    PlantedBug{"missing-intra-chunk-diagonal", "liger-gla", MixerForm::chunked, kLigerMissingDiagonal, "per layer fp64: parallel"},
                    PlantedBug{"missing-intra-chunk-diagonal", "hedgehog", MixerForm::chunked, kHedgehogMissingDiagonal, "per layer fp64: parallel"},
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
