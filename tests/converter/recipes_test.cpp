// Conversions with every recipe on every fixture: the three forms agree past every window (L1), the
// export reloads to its recorded logits (L2), layers kept as softmax are exact (L3), and the recipe
// parameters are validated. The windowed hybrids' decode state stays constant in the context length.
#include <gtest/gtest.h>

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <iostream>
#include <map>

#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "converter/names.h"
#include "converter/recipes/program_recorder.h"
#include "converter/recipes/torch_mixer_ops.h"
#include "converter/verify.h"
#include "formats/error.h"
#include "formats/safetensors.h"
#include "conversion_test_util.h"

namespace linearize {
namespace {

// Every registered recipe (the registry as the program starts: test-only recipes register later).
const std::vector<std::string> kRecipes = [] {
  std::vector<std::string> names;
  for (const auto& recipe : registered_recipes()) names.push_back(recipe.name);
  return names;
}();

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>() /
         expected.to(at::kDouble).abs().max().item<double>();
}

// A converted fixture with its verify logits recorded, as convert leaves it.
std::filesystem::path convert(const test::TempDir& dir, const std::string& fixture, const std::string& recipe,
                              nlohmann::json params = nlohmann::json::object()) {
  const auto out = test::convert_fixture(dir, fixture, recipe, std::move(params));
  record_verify_logits(out, load_model(out), builtin_verify_prompts(out, load_model_config(out / "config.json")).ids);
  return out;
}

using test::report_row;

// Adds 1 to every output of the projection it is attached to.
struct AddOne final : LinearAdapter {
  std::int64_t out;
  explicit AddOne(std::int64_t out) : out(out) {}
  at::Tensor delta(const at::Tensor& x) const override {
    auto sizes = x.sizes().vec();
    sizes.back() = out;
    return at::ones(sizes, x.options());
  }
};

// CausalLM::source_model of the conversion at `converted` computes what the source checkpoint computes,
// bit for bit (same kernels on the same tensors), holds the student's tensors rather than copies, and
// ignores adapters attached to the student (a LoRA-trained student's teacher stays the source).
void expect_source_model_is_the_source(const std::filesystem::path& converted, const std::filesystem::path& source_dir,
                                       const std::string& what) {
  auto student = load_model(converted);
  const auto source = CausalLM::load(source_dir);
  const auto view = student.source_model();
  const auto ids = at::randint(0, source.config().vocab_size, {2, 40}, at::kLong);
  const auto expected = source.forward(ids);
  EXPECT_TRUE(at::equal(view.forward(ids), expected)) << what;
  const auto student_before = student.forward(ids);
  for (std::size_t i = 0; i < student.layers().size(); ++i) {
    const auto& s = student.layers()[i];
    const auto& v = view.layers()[i];
    EXPECT_EQ(v.mixer->source_attention().projections().q.data_ptr(), s.attention.q.data_ptr()) << what << " layer " << i;
    s.adapters->attach(Projection::q, std::make_shared<AddOne>(s.attention.q.size(0)));
    if (s.routed_mlp.defined()) {  // a MoE layer: the same router and experts, which take no adapters
      EXPECT_EQ(v.routed_mlp.router().data_ptr(), s.routed_mlp.router().data_ptr()) << what << " layer " << i;
      EXPECT_EQ(v.routed_mlp.experts().back().down().data_ptr(), s.routed_mlp.experts().back().down().data_ptr()) << what << " layer " << i;
      continue;
    }
    EXPECT_EQ(v.mlp.down().data_ptr(), s.mlp.down().data_ptr()) << what << " layer " << i;
    EXPECT_EQ(v.mlp.gate().data_ptr(), s.mlp.gate().data_ptr()) << what << " layer " << i;
    s.adapters->attach(Projection::down, std::make_shared<AddOne>(s.mlp.down().size(0)));
  }
  EXPECT_FALSE(at::equal(student.forward(ids), student_before)) << what << ": the adapters act on the student";
  EXPECT_TRUE(at::equal(student.source_model().forward(ids), expected)) << what << ": and not on the source model";
}

class EveryRecipe : public testing::TestWithParam<std::tuple<std::string, std::string>> {};

// L0-L4 for every recipe on every fixture (deep-llama: 24 layers, outlier channels), on the built-in
// prompts: past every window (64, and Mistral's 16); whole conversions and hybrids keeping the last layer.
TEST_P(EveryRecipe, PassesVerify) {
  const auto& [fixture, recipe] = GetParam();
  test::TempDir dir;
  const auto layers = load_model_config(test::fixtures_dir() / fixture / "config.json").num_hidden_layers;
  for (const auto& kept : {nlohmann::json::array(), nlohmann::json{layers - 1}}) {
    const auto out = convert(dir, fixture, recipe, {{"softmax_layers", kept}});
    VerifyOptions options;
    options.model = out;
    options.source = test::fixtures_dir() / fixture;
    const auto report = verify_model(options);
    const std::string what = fixture + " " + recipe + " softmax_layers " + kept.dump();
    EXPECT_TRUE(report.passed()) << what << "\n" << report.table();
    for (const char* l1 : {"per layer fp64: parallel", "per layer fp64: recurrent", "per layer fp64: split prompt",
                           "drift in fp32: parallel", "drift in fp32: recurrent", "drift in fp32: split prompt"})
      EXPECT_TRUE(report_row(report, l1).passed) << what << " " << l1;
    EXPECT_EQ(report_row(report, "reload reproduces").value, 0.0) << "bit-identical on the same device and dtype";
    expect_source_model_is_the_source(out, test::fixtures_dir() / fixture, what);
    std::filesystem::remove_all(out);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EveryRecipe,
                         testing::Combine(testing::ValuesIn(test::fixture_models()),
                                          testing::ValuesIn(kRecipes)),
                         [](const testing::TestParamInfo<std::tuple<std::string, std::string>>& param) {
                           auto name = std::get<0>(param.param) + "_" + std::get<1>(param.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Phi-3's LongRoPE with long factors unlike the short ones switches every rotation past original_max_position_embeddings
// (64 here): a recurrent state cannot follow, so convert refuses it by name with nothing written, as dynamic RoPE. And
// Phi-3's q, k, v (gate, up) are row blocks of the fused qkv_proj (gate_up_proj), which PEFT adapts as one module: LoRA
// on them is refused, o_proj and down_proj take it.
TEST(Recipes, Phi3RefusesASwitchingLongRopeAndLoraOnItsFusedRows) {
  test::TempDir dir;
  test::copy_fixture("tiny-phi3", dir / "src", [](nlohmann::json& c) { c["rope_parameters"]["long_factor"] = std::vector<double>(6, 4.0); });
  ConvertOptions options;
  options.source = dir / "src";
  options.out = dir / "out";
  options.recipe = "lolcats";
  try {
    convert_checkpoint(options);
    ADD_FAILURE() << "converted a switching LongRoPE";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("rope_scaling.rope_type: 'longrope' rescales RoPE by the total sequence length"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(options.out / "config.json"));

  auto model = CausalLM::load(test::fixtures_dir() / "tiny-phi3");
  EXPECT_THROW(attach_lora(model, {"q_proj"}, {}), std::invalid_argument);
  EXPECT_THROW(attach_lora(model, {"up_proj"}, {}), std::invalid_argument);
  EXPECT_EQ(attach_lora(model, {"o_proj", "down_proj"}, {}).size(), 4u);  // 2 layers x 2
}

// Gemma scores q.k by query_pre_attn_scalar^-1/2, which need not be head_dim (Gemma 3 27B: 168 vs 128): the
// window branches score with the source's scale. LoLCATs with a window covering the prompt is exactly the
// source's softmax attention, so a window scored by head_dim^-1/2 (here 32^-1/2 vs 8^-1/2, scores off by 2x)
// is far outside the 1e-5 of L3; both hybrids convert and pass verify (prefill, decode and ONNX-free forms).
TEST(Recipes, WindowHybridsTakeTheSourceAttentionScale) {
  test::TempDir dir;
  test::copy_fixture("tiny-gemma3", dir / "src", [](nlohmann::json& c) { c["query_pre_attn_scalar"] = 8; });
  for (const char* recipe : {"liger-gla", "lolcats"}) {
    ConvertOptions options;
    options.source = dir / "src";
    options.out = dir / recipe;
    options.recipe = recipe;
    options.params = {{"window", 64}};
    convert_checkpoint(options);
    const auto report = record_and_verify(options.out, options.source);
    EXPECT_TRUE(report.passed()) << recipe << "\n" << report.table();
  }
  // 12 tokens: inside the fixture's own sliding window (16) too, so every source layer sees every key.
  const auto ids = SafetensorsFile::open(test::fixtures_dir() / "tiny-gemma3" / "reference.safetensors")
                       .tensor("prompt.2.input_ids")
                       .narrow(0, 0, 12)
                       .unsqueeze(0);
  const auto source = CausalLM::load(dir / "src");
  EXPECT_LE(relative_error(load_model(dir / "lolcats").forward(ids), source.forward(ids)), 1e-5);
}

TEST(Recipes, SoftmaxLayersReproduceTheSourceLayers) {
  test::TempDir dir;
  const auto out = convert(dir, "tiny-qwen2", "liger-gla", {{"softmax_layers", {0, 2}}});
  VerifyOptions options;
  options.model = out;
  options.source = test::fixtures_dir() / "tiny-qwen2";
  const auto report = verify_model(options);
  const auto& l3 = report_row(report, "softmax_layers reproduce");
  EXPECT_TRUE(l3.passed) << report.table();
  EXPECT_LE(l3.value, 1e-6);
  // And the layers really are mixed: layer 1 is converted, so the logits move.
  const auto model = load_model(out);
  EXPECT_EQ(model.layers()[0].mixer->kind(), "softmax");
  EXPECT_EQ(model.layers()[1].mixer->kind(), "liger-gla");
}

TEST(Recipes, AllSoftmaxConversionEqualsTheSource) {
  test::TempDir dir;
  const auto out = convert(dir, "tiny-mistral", "lolcats", {{"softmax_layers", {0, 1}}});
  const auto ids = SafetensorsFile::open(test::fixtures_dir() / "tiny-mistral" / "reference.safetensors")
                       .tensor("prompt.0.input_ids")
                       .unsqueeze(0);
  const auto expected = CausalLM::load(test::fixtures_dir() / "tiny-mistral").forward(ids);
  // The very same operations on the very same weights: bit-identical.
  EXPECT_TRUE(load_model(out).forward(ids).equal(expected));
}

TEST(Recipes, LolcatsWithAWindowCoveringThePromptEqualsTheSource) {
  // With window >= prompt length no key ever leaves the window: the linear branch gets no mass and the
  // shared normaliser reduces g * num / (g * den) to softmax attention, whatever g is.
  test::TempDir dir;
  const auto out = convert(dir, "tiny-llama", "lolcats", {{"window", 64}});
  const auto ids = SafetensorsFile::open(test::fixtures_dir() / "tiny-llama" / "reference.safetensors")
                       .tensor("prompt.2.input_ids")
                       .unsqueeze(0);  // 20 tokens
  const auto source = CausalLM::load(test::fixtures_dir() / "tiny-llama");
  // fp32, same maths in another order (windowed blocks vs one SDPA call): the 1e-5 relative of L3.
  EXPECT_LE(relative_error(load_model(out).forward(ids), source.forward(ids)), 1e-5);
  // Past the window it is a different function (the linear branch takes the old keys).
  const auto long_ids = at::cat({ids, ids, ids, ids}, 1);  // 80 tokens, past the window of 64
  EXPECT_GT(relative_error(load_model(out).forward(long_ids), source.forward(long_ids)), 1e-3);
}

TEST(Recipes, ALongPromptPrefilledInPiecesEqualsOneForward) {
  // Every recipe's state carried from one prefill piece to the next (a lolcats window across the cuts too).
  test::TempDir dir;
  const auto T = 2 * CausalLM::kPrefillPiece + 37;
  const auto ids = ((at::arange(T, at::kLong) * 7919) % 700).unsqueeze(0);
  const auto expect_pieces_equal_one_forward = [&](const CausalLM& model, const std::string& what) {
    auto state = model.new_state();
    const auto pieces = model.prefill(ids, state);
    EXPECT_EQ(state.position, T) << what;
    // fp32, the chunked form over other chunk boundaries: the logits' 1e-4 (as L1's split-prompt drift).
    EXPECT_LE(relative_error(pieces, model.forward(ids).select(1, T - 1)), 1e-4) << what;
  };
  for (const auto& recipe : kRecipes) expect_pieces_equal_one_forward(load_model(convert(dir, "tiny-llama", recipe)), recipe);
  // A kept sliding-window layer's KV cache across the cuts (Mistral's window of 16).
  expect_pieces_equal_one_forward(load_model(convert(dir, "tiny-mistral", "gated-deltanet", {{"softmax_layers", {0}}})),
                                  "tiny-mistral gated-deltanet, layer 0 kept");
}

// distill's device.dtype bf16 runs the forward under autocast: matmuls in bf16, accumulators and states in fp32.
// Every recipe's forward must run so (liger-gla's chunked GLA added a bf16 product into an fp32 accumulator in
// place, which ATen refuses) and stay within bf16 rounding of fp32: each matmul rounds its inputs to 8 mantissa
// bits (2^-8 relative per product), and tiny-llama chains about a dozen of them to the logits (q/k/v, the mixer's
// products, o, the MLP's three, lm_head): 12 x 2^-8 = 0.047 if every error added up, so 0.05.
TEST(Recipes, EveryRecipeRunsUnderBf16AutocastWithinItsRounding) {
  test::TempDir dir;
  const auto ids = ((at::arange(200, at::kLong) * 7919) % 700).unsqueeze(0);  // past lolcats' window and 3 chunks
  for (const auto& recipe : kRecipes) {
    const auto model = load_model(convert(dir, "tiny-llama", recipe));
    const auto exact = model.forward(ids);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::Tensor rounded;
    EXPECT_NO_THROW(rounded = model.forward(ids)) << recipe;
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    if (!rounded.defined()) continue;
    const double error = relative_error(rounded, exact);
    std::cout << recipe << ": bf16 autocast logits vs fp32 " << error << "\n";
    EXPECT_GT(error, 0.0) << recipe << ": autocast did not act";
    EXPECT_LT(error, 0.05) << recipe;
  }
}

TEST(Recipes, DecodeStateIsConstantInContextLength) {
  test::TempDir dir;
  for (const auto& recipe : kRecipes) {
    const auto model = load_model(convert(dir, "tiny-llama", recipe));
    auto state = model.new_state();
    auto next = model.prefill((at::arange(100, at::kLong) % 700).unsqueeze(0), state).argmax(-1);
    const auto after_prompt = state.bytes();
    for (int i = 0; i < 200; ++i) next = model.step(next, state).argmax(-1);
    EXPECT_EQ(state.bytes(), after_prompt) << recipe;
  }
  // The source's KV cache grows with every token.
  const auto source = CausalLM::load(test::fixtures_dir() / "tiny-llama");
  auto state = source.new_state();
  source.prefill((at::arange(100, at::kLong) % 700).unsqueeze(0), state);
  const auto before = state.bytes();
  source.step(at::tensor({5}, at::kLong), state);
  EXPECT_GT(state.bytes(), before);
}

// A purely linear layer's decode step writes its new state over the one it consumed (no fresh [B,H,K,V]
// tensor per token), and ends in the state one call over all the tokens leaves. Not hedgehog: a normalised
// state is joined with its key sum into one tensor per call (kernels/linear_attention.cpp initial_state), a
// copy, so its step writes a fresh state (measured: a new storage every token).
TEST(Recipes, LinearLayersDecodeInTheirOwnState) {
  test::TempDir dir;
  for (const std::string recipe : {"supra", "mamba2", "transnormer"}) {
    SCOPED_TRACE(recipe);
    const auto model = load_model(convert(dir, "tiny-llama", recipe));
    const auto& mixer = *model.layers()[0].mixer;
    const auto linear_of = [](MixerState& state) -> kernels::LinearState& {
      return dynamic_cast<recipes::RecipeMixerState&>(state).linear;
    };
    const CaptureFn none;
    const auto scope = names::mixer_scope(0);
    at::manual_seed(0);
    const auto x = at::randn({1, 8, model.config().hidden_size});
    auto state = mixer.new_state();
    mixer.forward(x.narrow(1, 0, 5), 0, state.get(), MixerCall{none, scope});
    // The chunked prefill leaves a view whose base is still held (storage use count 2, measured), so the
    // first step takes a fresh state; every step after it writes over its own.
    mixer.forward(x.narrow(1, 5, 1), 5, state.get(), MixerCall{none, scope});
    for (std::int64_t t = 6; t < 8; ++t) {
      const void* storage = linear_of(*state).kv.const_data_ptr();
      mixer.forward(x.narrow(1, t, 1), t, state.get(), MixerCall{none, scope});
      EXPECT_EQ(linear_of(*state).kv.const_data_ptr(), storage) << "token " << t;
    }
    auto whole = mixer.new_state();
    mixer.forward(x, 0, whole.get(), MixerCall{none, scope});
    // The same state as one call over the 8 tokens: fp32 sums in another order (u = 6e-8 over a few terms,
    // ~1e-6 relative); a skipped or doubled update in place would be off by whole k v^T terms, order 1.
    EXPECT_LE(relative_error(linear_of(*state).kv, linear_of(*whole).kv), 1e-5);
  }
}

// A recorded program is compared as the expression it computes: renumbering its values and reordering its ops (what
// another compiler's order of evaluating a primitive's arguments does) keeps it; any changed attribute or
// input, or a cycle, does not.
TEST(Recipes, RecordedProgramsCompareAsTheExpressionsTheyCompute) {
  const auto config = load_model_config(test::fixtures_dir() / "tiny-llama" / "config.json");
  for (const auto& recipe : registered_recipes()) {
    if (!recipe.describe) continue;
    SCOPED_TRACE(recipe.name);
    const auto record = recipe.describe(config, resolve_recipe_params(recipe, nlohmann::json::object(), config, "test"));
    const auto renumber = [](nlohmann::json& id) {
      if (id.get<std::int64_t>() > 1) id = 1000 - id.get<std::int64_t>();  // 0 (none) and 1 (x) keep their meaning
    };
    auto shuffled = record;
    for (auto& op : shuffled["ops"]) {
      for (auto& in : op["in"]) renumber(in);
      if (op["out"].is_array())
        for (auto& out : op["out"]) renumber(out);
      else
        renumber(op["out"]);
    }
    renumber(shuffled["output"]);
    std::reverse(shuffled["ops"].begin(), shuffled["ops"].end());
    EXPECT_EQ(recipes::program_expression(shuffled), recipes::program_expression(record));
    auto edited = record;
    edited["ops"].back()["in"][0] = 1;  // o_proj of x itself
    EXPECT_NE(recipes::program_expression(edited), recipes::program_expression(record));
    auto cyclic = record;
    cyclic["ops"].front()["in"][0] = cyclic["ops"].front()["out"].is_array() ? cyclic["ops"].front()["out"][0] : cyclic["ops"].front()["out"];
    EXPECT_THROW(recipes::program_expression(cyclic), std::out_of_range);
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Recipes, ParametersAreValidatedWithTheNearestKnownKey) {
  const auto config = load_model_config(test::fixtures_dir() / "tiny-llama" / "config.json");
  const auto& lolcats = find_recipe("lolcats", "command line", "--recipe");
  EXPECT_NE(error_of([&] { resolve_recipe_params(lolcats, {{"windw", 32}}, config, "run.yaml"); })
                .find("run.yaml: windw: unknown parameter of recipe lolcats (did you mean 'window'?)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resolve_recipe_params(lolcats, {{"window", "wide"}}, config, "cli"); }).find("cli: window: expected"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resolve_recipe_params(lolcats, {{"window", 0}}, config, "cli"); }).find("must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resolve_recipe_params(lolcats, {{"softmax_layers", {5}}}, config, "cli"); })
                .find("softmax_layers: 5 is not a layer of this model"),
            std::string::npos);
  EXPECT_NE(error_of([&] { find_recipe("ligr-gla", "cli", "--recipe"); }).find("did you mean 'liger-gla'?"),
            std::string::npos);
  const auto resolved = resolve_recipe_params(lolcats, {{"window", 32}}, config, "cli");
  EXPECT_EQ(resolved["window"], 32);
  EXPECT_EQ(resolved["window_factor_init"], -2.1972);  // the LoLCATs default (g = 0.1)
  EXPECT_EQ(linearized_architecture_name("liger-gla"), "LinearizeLigerGlaForCausalLM");
  const auto& gdn = find_recipe("gated-deltanet", "cli", "--recipe");
  EXPECT_NE(error_of([&] { resolve_recipe_params(gdn, {{"decay_init", 1.0}}, config, "cli"); }).find("cli: decay_init: must be below 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { resolve_recipe_params(gdn, {{"norm_eps", "small"}}, config, "cli"); }).find("cli: norm_eps: expected a value like"),
            std::string::npos);
}

// gated-deltanet starts as Qwen3.5's layer with the identity conv: beta = sigmoid(0) = 1/2, the decay
// a = exp(-exp(A_log) softplus(dt_bias)) = 1 - decay_init for every token (its projections start at 0), the gated
// norm's weight 1 with the source's epsilon, and a small seeded gate projection (nonzero: gradients must reach the
// rest through silu(z)), the same on every conversion but different between layers.
TEST(Recipes, GatedDeltaNetStartsFromTheIdentityConvAndItsInitialDecay) {
  auto config = load_model_config(test::fixtures_dir() / "tiny-qwen2" / "config.json");
  config.rms_norm_eps = 3e-6;
  const auto& gdn = find_recipe("gated-deltanet", "cli", "--recipe");
  const auto params = resolve_recipe_params(gdn, {{"decay_init", 0.01}}, config, "cli");
  EXPECT_EQ(params.at("norm_eps").get<double>(), 3e-6);  // derived from the source
  EXPECT_EQ(resolve_recipe_params(gdn, {{"norm_eps", 1e-5}}, config, "cli").at("norm_eps").get<double>(), 1e-5);
  const auto tensors = [&](std::int64_t layer) {
    std::map<std::string, at::Tensor> t;
    for (const auto& nt : gdn.new_tensors(LayerContext{config, layer, params})) t[nt.name] = nt.init().to(at::kDouble);
    return t;
  };
  const auto t = tensors(0);
  const std::int64_t H = config.num_attention_heads, Hkv = config.num_key_value_heads, d = config.head_dim;
  const auto conv = t.at("conv1d.weight");
  ASSERT_EQ(conv.sizes(), (std::vector<std::int64_t>{(H + 2 * Hkv) * d, 4}));
  EXPECT_TRUE(at::equal(conv.select(1, 3), at::ones({conv.size(0)}, at::kDouble)));
  EXPECT_EQ(conv.narrow(1, 0, 3).abs().max().item<double>(), 0.0);
  ASSERT_EQ(t.at("beta_proj.weight").sizes(), (std::vector<std::int64_t>{Hkv, config.hidden_size}));
  EXPECT_EQ(t.count("beta_proj.bias"), 0u);  // Qwen3.5's in_proj_b has no bias
  EXPECT_EQ(t.at("beta_proj.weight").abs().max().item<double>(), 0.0);
  EXPECT_EQ(t.at("decay_proj.weight").abs().max().item<double>(), 0.0);
  // fp32 storage of dt_bias: relative 1e-6 (a few ulps through log/softplus).
  const auto a = at::exp(-at::exp(t.at("A_log")) * at::softplus(t.at("decay_proj.bias")));
  EXPECT_NEAR(a.min().item<double>(), 0.99, 1e-6);
  EXPECT_NEAR(a.max().item<double>(), 0.99, 1e-6);
  EXPECT_TRUE(at::equal(t.at("norm.weight"), at::ones({d}, at::kDouble)));
  const auto z = t.at("z_proj.weight");
  ASSERT_EQ(z.sizes(), (std::vector<std::int64_t>{H * d, config.hidden_size}));
  EXPECT_NEAR(z.std().item<double>(), 0.02, 0.004);  // the sample std of >= 1e3 draws of N(0, 0.02^2)
  EXPECT_TRUE(at::equal(z, tensors(0).at("z_proj.weight")));
  EXPECT_FALSE(at::equal(z, tensors(1).at("z_proj.weight")));
}

// Mamba-in-the-Llama's start: the conv is the identity tap with the source's v, k, q biases as its bias (the
// Granite mixer's in_proj has none), dt = dt_init, A spans Mamba's [1, 16] over the heads, D = 1, the norm's
// epsilon is the source's, the gate's projection is small and nonzero (gradients must reach the rest), and it is
// the same on every conversion (seeded by the layer) but differs between layers.
TEST(Recipes, Mamba2StartsFromTheIdentityConvAndItsInitialDt) {
  const auto config = load_model_config(test::fixtures_dir() / "tiny-qwen2" / "config.json");
  const auto& mamba2 = find_recipe("mamba2", "cli", "--recipe");
  const auto params = resolve_recipe_params(mamba2, {{"dt_init", 0.02}}, config, "cli");
  EXPECT_EQ(params.at("norm_eps").get<double>(), config.rms_norm_eps);
  const auto source = CheckpointWeights::open(test::fixtures_dir() / "tiny-qwen2");
  const auto source_tensor = [&](const std::string& name) { return source.contains(name) ? source.tensor(name) : at::Tensor(); };
  const auto tensors = [&](std::int64_t layer) {
    std::map<std::string, at::Tensor> t;
    for (const auto& nt : mamba2.new_tensors(LayerContext{config, layer, params, source_tensor}))
      t[nt.name] = nt.init().to(at::kDouble);
    return t;
  };
  const auto t = tensors(0);
  const std::int64_t H = config.num_attention_heads, d = config.head_dim;
  const auto conv = t.at("conv1d.weight");
  ASSERT_EQ(conv.sizes(), (std::vector<std::int64_t>{2 * config.num_key_value_heads * d + H * d, 4}));
  EXPECT_TRUE(at::equal(conv.select(1, 3), at::ones({conv.size(0)}, at::kDouble)));
  EXPECT_EQ(conv.narrow(1, 0, 3).abs().max().item<double>(), 0.0);
  const auto bias = [&](names::LayerModule m) { return source.tensor(names::bias(0, m)).to(at::kDouble); };
  ASSERT_GT(bias(names::LayerModule::k_proj).abs().max().item<double>(), 0.0);  // Qwen2 has q/k/v biases
  EXPECT_TRUE(at::equal(t.at("conv1d.bias"), at::cat({bias(names::LayerModule::v_proj), bias(names::LayerModule::k_proj),
                                                       bias(names::LayerModule::q_proj)})));
  EXPECT_NEAR(at::softplus(t.at("dt_bias")).max().item<double>(), 0.02, 1e-7);  // fp32 storage through softplus^-1
  EXPECT_NEAR(at::exp(t.at("A_log")).min().item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(at::exp(t.at("A_log")).max().item<double>(), 16.0, 1e-5);
  EXPECT_TRUE(at::equal(t.at("D"), at::ones({H}, at::kDouble)));
  const double z_std = t.at("z_proj.weight").std().item<double>();
  EXPECT_GT(z_std, 0.015);  // N(0, 0.02^2) over H d x hidden draws
  EXPECT_LT(z_std, 0.025);
  EXPECT_TRUE(at::equal(tensors(0).at("z_proj.weight"), t.at("z_proj.weight")));
  EXPECT_FALSE(at::equal(tensors(1).at("z_proj.weight"), t.at("z_proj.weight")));
}

}  // namespace
}  // namespace linearize
