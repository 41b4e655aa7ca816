// config.json -> ModelConfig for the registered families: legacy and v5 RoPE keys, head_dim, GQA, window rules
// per family, the block traits, and errors that name the file and the key.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "converter/model_config.h"
#include "test_util.h"

namespace linearize {
namespace {

using nlohmann::json;

json base(const std::string& model_type, const std::string& arch) {
  return {{"architectures", {arch}}, {"model_type", model_type}, {"vocab_size", 1000}, {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 4}, {"num_attention_heads", 4}};
}

class ConfigTest : public testing::Test {
 protected:
  ModelConfig load(const json& j) {
    test::write_file(dir_ / "config.json", j.dump());
    return load_model_config(dir_ / "config.json");
  }
  std::string error(const json& j) {
    try {
      load(j);
    } catch (const InputError& e) {
      return e.what();
    }
    return "(no error)";
  }
  std::string error_prefix(const std::string& field) { return (dir_ / "config.json").string() + ": " + field + ": "; }
  test::TempDir dir_;
};

TEST_F(ConfigTest, LlamaWithLegacyRopeScalingAndExplicitHeadDim) {
  auto j = base("llama", "LlamaForCausalLM");
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 24;  // differs from hidden / heads = 16
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  j["tie_word_embeddings"] = true;
  j["torch_dtype"] = "bfloat16";
  j["eos_token_id"] = {128001, 128009};
  j["bos_token_id"] = 128000;
  const auto c = load(j);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 24);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.kv_groups(), 2);
  EXPECT_EQ(c.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(*c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(*c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(*c.rope.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{128001, 128009}));
  EXPECT_EQ(*c.bos_token_id, 128000);
  EXPECT_EQ(c.layer_types, std::vector<AttentionKind>(4, AttentionKind::Full));
  EXPECT_EQ(c.max_position_embeddings, 2048) << "LlamaConfig default";
}

TEST_F(ConfigTest, LegacyTypeKeyAndDefaults) {
  auto j = base("llama", "LlamaForCausalLM");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const auto c = load(j);
  EXPECT_EQ(c.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_key_value_heads, 4) << "Llama: kv heads default to heads";
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.attention_bias);
}

TEST_F(ConfigTest, V5RopeParametersWithYarn) {
  auto j = base("qwen2", "Qwen2ForCausalLM");
  j["num_key_value_heads"] = 2;
  j["max_position_embeddings"] = 32768;
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1000000.0}, {"factor", 4.0}};
  j["dtype"] = "float32";
  const auto c = load(j);
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1000000.0);
  EXPECT_EQ(*c.rope.original_max_position_embeddings, 32768) << "defaults to max_position_embeddings";
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_FALSE(c.rope.attention_factor.has_value());
  EXPECT_EQ(c.dtype, "float32");
}

TEST_F(ConfigTest, V5DefaultRopeParameters) {
  auto j = base("mistral", "MistralForCausalLM");
  j["num_key_value_heads"] = 2;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  const auto c = load(j);
  EXPECT_EQ(c.rope.type, RopeType::Default);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1000000.0);
}

// The bases Gemma3TextConfig fills in where config.json omits them (transformers 5.22.2 printed these
// rope_parameters for the same keys): full layers default_theta["global"] = 1e6, sliding layers
// rope_local_base_freq else 1e4, never the top-level rope_theta.
TEST_F(ConfigTest, Gemma3RopeBasesDefaultAsGemma3TextConfigDoes) {
  struct Case {
    json keys;
    double full, sliding;
  };
  const json both_untyped = {{"full_attention", {{"rope_type", "default"}}}, {"sliding_attention", {{"rope_type", "default"}}}};
  const std::vector<Case> cases{
      {json::object(), 1e6, 1e4},
      {{{"rope_theta", 5e5}}, 5e5, 1e4},
      {{{"rope_theta", 5e5}, {"rope_parameters", both_untyped}}, 5e5, 1e4},
      {{{"rope_theta", 5e5}, {"rope_parameters", both_untyped}, {"rope_local_base_freq", 2e4}}, 5e5, 2e4},
      {{{"rope_local_base_freq", 2e4}}, 1e6, 2e4},
      {{{"rope_local_base_freq", 2e4},
        {"rope_parameters", {{"full_attention", {{"rope_type", "default"}}},
                             {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 3e4}}}}}},
       1e6, 3e4},
  };
  for (const auto& c : cases) {
    auto j = base("gemma3_text", "Gemma3ForCausalLM");
    j.update(c.keys);
    const auto config = load(j);
    EXPECT_DOUBLE_EQ(config.rope.theta, c.full) << c.keys;
    ASSERT_TRUE(config.sliding_rope.has_value()) << c.keys;
    EXPECT_DOUBLE_EQ(config.sliding_rope->theta, c.sliding) << c.keys;
  }
}

// The 2026 families' config traits; expected values as transformers 5.22.2's config classes print them
// (SmolLM3Config(num_hidden_layers=8).no_rope_layers, Olmo3Config(num_hidden_layers=4, rope_scaling=...)).
TEST_F(ConfigTest, SmolLM3NoRopeLayersDefaultToEveryFourthAndWindowOnlyThose) {
  auto j = base("smollm3", "SmolLM3ForCausalLM");
  j["num_hidden_layers"] = 8;
  auto c = load(j);
  EXPECT_EQ(c.nope_layers, (std::vector<bool>{false, false, false, true, false, false, false, true}));  // [1,1,1,0,...]
  EXPECT_DOUBLE_EQ(c.rope.theta, 2e6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_for(3).partial_rotary_factor, 0.0);  // the identity rotation
  EXPECT_EQ(c.rope_for(2).partial_rotary_factor, 1.0);
  EXPECT_FALSE(c.has_sliding_layers());
  j["use_sliding_window"] = true;
  j["sliding_window"] = 64;
  c = load(j);
  EXPECT_EQ(c.layer_types[3], AttentionKind::Sliding);
  EXPECT_EQ(c.layer_types[2], AttentionKind::Full);
  j["no_rope_layers"] = {1, 0, 1};
  EXPECT_EQ(error(j).rfind(error_prefix("no_rope_layers") + "has 3 entries for 8 layers", 0), 0u) << error(j);
  j["no_rope_layers"] = {1, 2, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(error(j).rfind(error_prefix("no_rope_layers"), 0), 0u) << error(j);
}

TEST_F(ConfigTest, GraniteMultipliersAndOlmoBlocks) {
  auto j = base("granite", "GraniteForCausalLM");
  j.update({{"embedding_multiplier", 12.0}, {"attention_multiplier", 0.0078125}, {"residual_multiplier", 0.22}, {"logits_scaling", 16.0}});
  auto c = load(j);
  EXPECT_DOUBLE_EQ(c.block.embedding_scale, 12.0);
  EXPECT_DOUBLE_EQ(*c.block.attention_scale, 0.0078125);
  EXPECT_DOUBLE_EQ(c.block.residual_scale, 0.22);
  EXPECT_DOUBLE_EQ(c.block.logits_divisor, 16.0);
  j["residual_multiplier"] = 0;
  EXPECT_EQ(error(j).rfind(error_prefix("residual_multiplier") + "must be positive", 0), 0u) << error(j);

  c = load(base("olmo2", "Olmo2ForCausalLM"));
  EXPECT_EQ(c.block.norms, NormPlacement::Post);
  EXPECT_EQ(c.block.qk_norm, QkNorm::FullWidth);
  EXPECT_EQ(c.block.norm, NormStyle::WeightInFp32);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);  // Olmo2Config's default

  j = base("olmo3", "Olmo3ForCausalLM");
  j["rope_theta"] = 5e5;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 8.0}, {"original_max_position_embeddings", 8192}};
  c = load(j);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::Sliding, AttentionKind::Sliding, AttentionKind::Sliding, AttentionKind::Full}));
  EXPECT_EQ(*c.sliding_window, 4096);
  EXPECT_EQ(c.rope_for(3).type, RopeType::Yarn);       // full: the legacy rope_scaling
  EXPECT_EQ(c.rope_for(0).type, RopeType::Default);    // sliding: default RoPE at rope_theta
  EXPECT_DOUBLE_EQ(c.rope_for(0).theta, 5e5);
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 8.0}};
  EXPECT_EQ(error(j).rfind(error_prefix("rope_parameters") + "OLMo 3 reads one object per layer type", 0), 0u) << error(j);
}

// Which layers route, as Qwen3MoeDecoderLayer decides: not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
TEST_F(ConfigTest, MoeRoutingKeys) {
  auto j = base("qwen3_moe", "Qwen3MoeForCausalLM");
  j.update({{"num_experts", 8}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 32}, {"norm_topk_prob", true},
            {"decoder_sparse_step", 2}, {"mlp_only_layers", {3}}});
  auto c = load(j);
  EXPECT_EQ(c.moe.sparse_layers, (std::vector<bool>{false, true, false, false}));
  EXPECT_EQ(c.moe.intermediate_size, 32);
  EXPECT_TRUE(c.moe.normalize_top_k);
  j["num_experts_per_tok"] = 9;
  EXPECT_EQ(error(j).rfind(error_prefix("num_experts_per_tok") + "must be in 1..8", 0), 0u) << error(j);
  j["num_experts_per_tok"] = 2;
  j["mlp_only_layers"] = {7};
  EXPECT_EQ(error(j).rfind(error_prefix("mlp_only_layers") + "layer 7 does not exist", 0), 0u) << error(j);

  j["num_local_experts"] = 16;  // Qwen3MoeConfig.attribute_map: the same key
  EXPECT_EQ(error(j).rfind(error_prefix("num_local_experts") + "differs from num_experts", 0), 0u) << error(j);
  j.erase("num_experts");
  j["mlp_only_layers"] = {3};
  EXPECT_EQ(load(j).moe.experts, 16);  // as transformers 5.22 writes Qwen3MoeConfig

  auto mixtral = base("mixtral", "MixtralForCausalLM");
  mixtral["num_key_value_heads"] = 2;
  c = load(mixtral);
  EXPECT_EQ(c.moe.experts, 8);  // MixtralConfig's defaults
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.intermediate_size, c.intermediate_size);
  EXPECT_TRUE(c.moe.normalize_top_k);
  EXPECT_EQ(c.block.expert_names, names::ExpertNames::block_sparse_moe);

  j = base("olmoe", "OlmoeForCausalLM");
  c = load(j);
  EXPECT_EQ(c.moe.experts, 64);  // OlmoeConfig's defaults
  EXPECT_FALSE(c.moe.normalize_top_k);
  EXPECT_EQ(c.block.qk_norm, QkNorm::FullWidth);
  j["clip_qkv"] = 8.0;
  EXPECT_EQ(error(j).rfind(error_prefix("clip_qkv"), 0), 0u) << error(j);
}

// gpt-oss with GptOssConfig's defaults (its __post_init__: sliding layers first and alternating, YaRN factor 32 over
// 4096 positions, not truncated), its block and tensors; a quantized (MXFP4) checkpoint refused by its key.
TEST_F(ConfigTest, GptOssDefaultsBlockTensorsAndQuantizedRefusal) {
  auto j = base("gpt_oss", "GptOssForCausalLM");
  j["num_key_value_heads"] = 2;
  const auto c = load(j);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::Sliding, AttentionKind::Full, AttentionKind::Sliding,
                                                       AttentionKind::Full}));
  EXPECT_EQ(c.sliding_window, 128);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_DOUBLE_EQ(c.rope.theta, 150000.0);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.moe.experts, 128);
  EXPECT_EQ(c.moe.top_k, 4);
  EXPECT_EQ(c.moe.intermediate_size, 128);  // each expert's is intermediate_size
  EXPECT_TRUE(c.moe.normalize_top_k);
  ASSERT_TRUE(c.moe.expert_activation);
  EXPECT_EQ(c.moe.expert_activation->kind, MlpActivation::ClampedSwiglu);
  EXPECT_DOUBLE_EQ(c.moe.expert_activation->alpha, 1.702);
  EXPECT_DOUBLE_EQ(c.moe.expert_activation->limit, 7.0);
  EXPECT_EQ(c.block.activation, MlpActivation::Silu);  // hidden_act: no dense MLP uses it
  EXPECT_TRUE(c.block.attention_sinks);
  EXPECT_EQ(c.block.norm, NormStyle::WeightInFp32);
  std::map<std::string, std::vector<std::int64_t>> shapes;
  for (const auto& spec : decoder_tensors(*c.family, c)) shapes[spec.name] = spec.shape;
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.sinks"), (std::vector<std::int64_t>{4}));
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.o_proj.bias"), (std::vector<std::int64_t>{64}));
  EXPECT_EQ(shapes.at("model.layers.1.mlp.router.bias"), (std::vector<std::int64_t>{128}));
  EXPECT_EQ(shapes.at("model.layers.1.mlp.experts.gate_up_proj"), (std::vector<std::int64_t>{128, 64, 256}));
  EXPECT_EQ(shapes.at("model.layers.1.mlp.experts.down_proj"), (std::vector<std::int64_t>{128, 128, 64}));
  EXPECT_EQ(shapes.at("model.layers.1.mlp.experts.down_proj_bias"), (std::vector<std::int64_t>{128, 64}));
  EXPECT_EQ(shapes.count("model.layers.1.mlp.experts.0.gate_proj.weight"), 0u);

  auto quantized = j;
  quantized["quantization_config"] = {{"quant_method", "mxfp4"}, {"modules_to_not_convert", {"model.layers.*.self_attn"}}};
  EXPECT_EQ(error(quantized).rfind(error_prefix("quantization_config") + "quantized checkpoints ('mxfp4')", 0), 0u) << error(quantized);
  j["swiglu_limit"] = 0.0;
  EXPECT_EQ(error(j).rfind(error_prefix("swiglu_limit") + "must be positive", 0), 0u) << error(j);
}

TEST_F(ConfigTest, Phi3FusedProjectionsPartialRotaryAndLongRopeNamed) {
  auto j = base("phi3", "Phi3ForCausalLM");
  j.update({{"partial_rotary_factor", 0.75}, {"sliding_window", 2047}});
  const auto c = load(j);
  EXPECT_TRUE(c.block.fused_projections);
  EXPECT_DOUBLE_EQ(c.rope.partial_rotary_factor, 0.75);
  EXPECT_EQ(c.layer_types, std::vector<AttentionKind>(4, AttentionKind::Sliding));  // Phi3Attention: every layer
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);  // Phi3Config's default
  const auto names = decoder_tensors(*c.family, c);
  const auto has = [&](const std::string& name) {
    return std::any_of(names.begin(), names.end(), [&](const TensorSpec& t) { return t.name == name; });
  };
  EXPECT_TRUE(has("model.layers.0.self_attn.qkv_proj.weight"));
  EXPECT_TRUE(has("model.layers.0.mlp.gate_up_proj.weight"));
  EXPECT_FALSE(has("model.layers.0.self_attn.q_proj.weight"));
  // Phi-3.5 / Phi-4-mini's LongRoPE: one factor per rotary frequency (12 of 16 channels rotate: 6), the top-level
  // original_max_position_embeddings winning (Phi3Config.standardize_rope_params).
  j["original_max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", {1.0}}, {"long_factor", {2.0}}, {"original_max_position_embeddings", 32}};
  EXPECT_EQ(error(j).rfind(error_prefix("rope_scaling.short_factor") + "has 1 entries for 6 rotary frequencies", 0), 0u) << error(j);
  j["rope_scaling"]["short_factor"] = std::vector<double>(6, 1.0);
  j["rope_scaling"]["long_factor"] = std::vector<double>(6, 2.0);
  const auto longrope = load(j);
  EXPECT_EQ(longrope.rope.type, RopeType::LongRope);
  EXPECT_EQ(*longrope.rope.original_max_position_embeddings, 64);
  EXPECT_TRUE(kernels::rope_depends_on_length(longrope.rope));
}

TEST_F(ConfigTest, MistralWindowCoversEveryLayerAndKvDefaultIsEight) {
  auto j = base("mistral", "MistralForCausalLM");
  j["num_attention_heads"] = 8;
  j["sliding_window"] = 16;
  auto c = load(j);
  EXPECT_EQ(c.num_key_value_heads, 8) << "MistralConfig default";
  EXPECT_EQ(*c.sliding_window, 16);
  EXPECT_EQ(c.layer_types, std::vector<AttentionKind>(4, AttentionKind::Sliding));
  j["sliding_window"] = nullptr;  // Mistral v0.2+ checkpoints
  c = load(j);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_FALSE(c.has_sliding_layers());
  j.erase("sliding_window");  // absent: the class default 4096
  EXPECT_EQ(*load(j).sliding_window, 4096);
}

TEST_F(ConfigTest, Qwen2WindowOnlyWithUseSlidingWindowFromMaxWindowLayers) {
  auto j = base("qwen2", "Qwen2ForCausalLM");
  j["num_key_value_heads"] = 2;
  j["sliding_window"] = 32;
  j["max_window_layers"] = 2;
  auto c = load(j);
  EXPECT_FALSE(c.sliding_window.has_value()) << "use_sliding_window defaults to false";
  EXPECT_FALSE(c.has_sliding_layers());
  j["use_sliding_window"] = true;
  c = load(j);
  EXPECT_EQ(*c.sliding_window, 32);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::Full, AttentionKind::Full, AttentionKind::Sliding,
                                                       AttentionKind::Sliding}));
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  c = load(j);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::Sliding, AttentionKind::Full, AttentionKind::Sliding,
                                                       AttentionKind::Full}));
}

TEST_F(ConfigTest, MissingRequiredKeys) {
  for (const char* key : {"architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) {
    auto j = base("llama", "LlamaForCausalLM");
    j.erase(key);
    EXPECT_EQ(error(j), error_prefix(key) + "required key is missing") << key;
  }
}

TEST_F(ConfigTest, ImpossibleValues) {
  auto j = base("llama", "LlamaForCausalLM");
  j["num_key_value_heads"] = 3;
  EXPECT_EQ(error(j), error_prefix("num_key_value_heads") + "3 does not divide num_attention_heads 4");
  j = base("llama", "LlamaForCausalLM");
  j["num_attention_heads"] = 5;
  EXPECT_EQ(error(j), error_prefix("num_attention_heads") + "5 does not divide hidden_size 64 (and no head_dim is given)");
  j["head_dim"] = 16;  // with an explicit head_dim, 5 heads of 16 is a valid (if odd) shape
  EXPECT_EQ(load(j).head_dim, 16);
  j = base("llama", "LlamaForCausalLM");
  j["hidden_size"] = 0;
  EXPECT_EQ(error(j), error_prefix("hidden_size") + "must be positive, got 0");
  j = base("llama", "LlamaForCausalLM");
  j["hidden_size"] = "64";
  EXPECT_EQ(error(j), error_prefix("hidden_size") + "expected an integer, got \"64\"");
  j = base("llama", "LlamaForCausalLM");
  j["head_dim"] = 15;
  EXPECT_EQ(error(j), error_prefix("head_dim") + "rotary dimension 15 is odd");
}

TEST_F(ConfigTest, RopeErrorsNameTheNestedKey) {
  auto j = base("llama", "LlamaForCausalLM");
  j["rope_scaling"] = {{"rope_type", "mrope"}, {"factor", 2.0}};
  EXPECT_EQ(error(j), error_prefix("rope_scaling.rope_type") + "unsupported RoPE type 'mrope' (supported: default, linear, dynamic, llama3, yarn, longrope)");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}};
  EXPECT_EQ(error(j), error_prefix("rope_scaling.low_freq_factor") + "required key is missing");
  j["rope_scaling"] = {{"type", "dynamic"}};
  EXPECT_EQ(error(j), error_prefix("rope_scaling.factor") + "required key is missing");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 0.5}};
  EXPECT_EQ(error(j), error_prefix("rope_parameters.factor") + "must be >= 1, got 0.500000");
}

TEST_F(ConfigTest, LayerTypesMustMatchTheLayers) {
  auto j = base("qwen2", "Qwen2ForCausalLM");
  j["num_key_value_heads"] = 4;
  j["layer_types"] = {"full_attention"};
  EXPECT_EQ(error(j), error_prefix("layer_types") + "has 1 entries for 4 layers");
  j["layer_types"] = {"full_attention", "full_attention", "full_attention", "chunked_attention"};
  EXPECT_EQ(error(j), error_prefix("layer_types") + "unknown layer type 'chunked_attention' (known: full_attention, sliding_attention)");
  j["layer_types"] = {"full_attention", "full_attention", "full_attention", "sliding_attention"};
  EXPECT_EQ(error(j), error_prefix("layer_types") + "names sliding_attention layers but no sliding_window is in effect");
}

TEST_F(ConfigTest, NotJson) {
  test::write_file(dir_ / "config.json", "{\"vocab_size\": 12,");
  try {
    load_model_config(dir_ / "config.json");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(error_prefix("file") + "not valid JSON", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace linearize
