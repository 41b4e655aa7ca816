#include "converter/native_export.h"

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/model/lora.h"
#include "converter/model_config.h"
#include "converter/names.h"
#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize {
namespace {

using names::LayerModule;

// What a layout is given: the conversion's config, its weights (mapped; read as the file reaches them) and its
// recipe's parameters.
struct Conversion {
  const ModelConfig& config;
  const CheckpointWeights& weights;
  const RecipeParams& params;
  std::vector<bool> converted;  // per layer: the recipe's mixer (else kept softmax attention)
};

// What a layout writes: its tensors (computed as they are written) and config.json.
struct NativePlan {
  DeferredTensors tensors;
  nlohmann::ordered_json config;
};

struct NativeLayout {
  std::string name;
  std::string recipe;  // the recipe whose layers it holds
  std::vector<NativeInexact> (*check)(const Conversion&);
  NativePlan (*plan)(const Conversion&);
  std::int64_t (*state_growth)(const ModelConfig&);  // the layout's recurrent state over the conversion's
};

// A tensor of the conversion as stored (a view of its mapping).
DeferredTensor copied(const Conversion& c, const std::string& from, const std::string& to) {
  const auto view = c.weights.tensor(from);
  return {to, view.scalar_type(), view.sizes().vec(), [&weights = c.weights, from] { return weights.tensor(from); }};
}

// A tensor computed from the conversion's `inputs` when the file reaches it; their mapped pages are dropped after
// (they count in the process's RSS until released), so memory holds one layer's inputs at a time.
DeferredTensor computed(const Conversion& c, std::string to, at::ScalarType dtype, std::vector<std::int64_t> shape,
                        std::vector<std::string> inputs, std::function<at::Tensor()> value) {
  return {std::move(to), dtype, std::move(shape), [&weights = c.weights, inputs = std::move(inputs), value = std::move(value)] {
            auto t = value();
            for (const auto& name : inputs) weights.release(name);
            return t;
          }};
}

// A (1 + w) RMSNorm's weight w - 1 in fp32, from the source's norm (w itself when it already is (1 + w)).
DeferredTensor one_plus_norm(const Conversion& c, const std::string& from, const std::string& to) {
  const double offset = c.config.block.norm == NormStyle::OnePlusWeight ? 0.0 : 1.0;
  const auto shape = c.weights.tensor(from).sizes().vec();
  return computed(c, to, at::kFloat, shape, {from}, [&weights = c.weights, from, offset] { return weights.tensor(from).to(at::kFloat) - offset; });
}

// Rows (or entries) grouped per kv head, each head's block repeated for the `groups` query heads that read it
// (query head h reads kv head h / groups): [Hkv * n, ...] -> [Hkv * groups * n, ...].
at::Tensor repeat_per_head(const at::Tensor& t, std::int64_t kv_heads, std::int64_t groups) {
  auto shape = t.sizes().vec();
  shape[0] *= groups;
  return t.reshape({kv_heads, 1, -1}).expand({kv_heads, groups, t.numel() / kv_heads}).reshape(shape);
}

// Qwen3.5 ----------------------------------------------------------------------------------------------------

std::string recipe_name(std::int64_t layer, const char* name) { return names::recipe_tensor(layer, name); }

// What neither layout holds (`name` names the layout in the reasons): a block other than norm -> mixer -> norm ->
// SwiGLU MLP, a gated norm whose epsilon is not rms_norm_eps, an o_proj bias on a converted layer, and on a kept
// softmax layer a sliding window, biases (llama.cpp's graphs have none) or RoPE scaling.
void add(std::vector<NativeInexact>& out, std::string field, std::optional<std::int64_t> layer, std::string reason) {
  out.push_back({std::move(field), layer, std::move(reason)});
}

std::vector<NativeInexact> shared_checks(const Conversion& c, const std::string& name) {
  const auto& cfg = c.config;
  std::vector<NativeInexact> out;
  if (cfg.block.norms == NormPlacement::Sandwich)
    add(out, "pre_feedforward_layernorm", {}, "sandwich norms (Gemma): " + name + "'s block has one norm before the mixer and one before the MLP");
  if (cfg.block.norms == NormPlacement::Post)
    add(out, "post_feedforward_layernorm", {}, "post-norms (OLMo 2): " + name + "'s block normalises the mixer's and the MLP's inputs");
  if (cfg.block.final_logit_softcap) add(out, "final_logit_softcapping", {}, name + " does not soft-cap its logits");
  if (cfg.block.activation != MlpActivation::Silu || cfg.hidden_act != "silu")
    add(out, "hidden_act", {}, "'" + cfg.hidden_act + "': " + name + "'s MLP and conv use silu (llama.cpp hard-codes it)");
  if (cfg.mlp_bias) add(out, "mlp_bias", {}, name + "'s MLP has no biases");
  if (std::abs(c.params.at("norm_eps").get<double>() - cfg.rms_norm_eps) > 0)
    add(out, "linearize.params.norm_eps", {}, "the gated norm's epsilon differs from rms_norm_eps; " + name + " uses one for every norm");
  const auto has = [&](std::int64_t i, LayerModule m) { return c.weights.contains(names::bias(i, m)); };
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    if (c.converted[static_cast<std::size_t>(i)]) {
      if (has(i, LayerModule::o_proj)) add(out, names::module_in_layer(LayerModule::o_proj) + ".bias", i, name + "'s out_proj has no bias");
      continue;
    }
    if (cfg.layer_types[static_cast<std::size_t>(i)] == AttentionKind::Sliding)
      add(out, "sliding_window", i, "a sliding-window layer; " + name + "'s attention is full");
    for (const auto m : {LayerModule::q_proj, LayerModule::k_proj, LayerModule::v_proj, LayerModule::o_proj})
      if (has(i, m)) add(out, names::module_in_layer(m) + ".bias", i, "attention biases (llama.cpp's graph has none)");
    if (cfg.rope_for(i).type != RopeType::Default) add(out, "rope_scaling", i, name + "'s export writes default RoPE only");
    if (cfg.is_nope(i)) add(out, "no_rope_layers", i, "a kept softmax layer without RoPE (SmolLM3's NoPE); " + name + "'s attention layers all rotate");
  }
  return out;
}

std::vector<NativeInexact> qwen3_5_check(const Conversion& c) {
  const auto& cfg = c.config;
  auto out = shared_checks(c, "Qwen3.5");
  if (cfg.block.embedding_scale != 1.0) add(out, "embed_tokens", {}, "the source scales its embeddings; Qwen3.5 does not");
  if (cfg.block.residual_scale != 1.0) add(out, "residual_multiplier", {}, "the source scales its residual branches; Qwen3.5 does not");
  if (cfg.block.logits_divisor != 1.0) add(out, "logits_scaling", {}, "the source divides its logits; Qwen3.5 does not");
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    if (c.converted[static_cast<std::size_t>(i)]) continue;
    if (cfg.block.qk_norm != QkNorm::PerHead)
      add(out, names::module_in_layer(LayerModule::q_norm), i,
          "a kept softmax layer without per-head q/k RMSNorms: Qwen3.5's attention always has them (convert a Qwen3 "
          "source, or keep no softmax layers)");
    if (cfg.block.attention_scale && std::abs(*cfg.block.attention_scale * std::sqrt(double(cfg.head_dim)) - 1) > 1e-12)
      add(out, "query_pre_attn_scalar", i, "an attention scale other than head_dim^-1/2");
  }
  return out;
}

// The gated-deltanet layer as Qwen3.5's linear_attn: k, v, beta and the decay repeated from the kv heads to the
// query heads; the conv's channels [q | k | v] likewise.
void qwen3_5_linear_layer(const Conversion& c, std::int64_t i, DeferredTensors& out) {
  const auto& cfg = c.config;
  const std::int64_t H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, G = cfg.kv_groups(), d = cfg.head_dim;
  const std::int64_t hidden = cfg.hidden_size, K = c.params.at("conv_kernel").get<std::int64_t>();
  const auto& w = c.weights;
  const auto to = [i](const char* part) { return names::qwen3_5_linear_attn(i, part); };
  const auto q = names::weight(i, LayerModule::q_proj), k = names::weight(i, LayerModule::k_proj), v = names::weight(i, LayerModule::v_proj);
  out.push_back(computed(c, to(names::kQwen35InProjQkv), w.tensor(q).scalar_type(), {3 * H * d, hidden}, {q, k, v}, [&w, q, k, v, Hkv, G] {
    return at::cat({w.tensor(q), repeat_per_head(w.tensor(k), Hkv, G), repeat_per_head(w.tensor(v), Hkv, G)});
  }));
  const auto conv = recipe_name(i, names::kConvWeight);
  out.push_back(computed(c, to(names::kQwen35Conv), at::kFloat, {3 * H * d, 1, K}, {conv}, [&w, conv, H, Hkv, G, d] {
    const auto t = w.tensor(conv).to(at::kFloat);
    return at::cat({t.narrow(0, 0, H * d), repeat_per_head(t.narrow(0, H * d, Hkv * d), Hkv, G),
                    repeat_per_head(t.narrow(0, (H + Hkv) * d, Hkv * d), Hkv, G)})
        .unsqueeze(1);
  }));
  const auto repeated = [&](const char* from, const char* part) {
    const auto name = recipe_name(i, from);
    auto shape = w.tensor(name).sizes().vec();
    shape[0] *= G;
    out.push_back(computed(c, to(part), at::kFloat, shape, {name}, [&w, name, Hkv, G] { return repeat_per_head(w.tensor(name).to(at::kFloat), Hkv, G); }));
  };
  out.push_back(copied(c, recipe_name(i, names::kGateWeight), to(names::kQwen35InProjZ)));
  repeated(names::kBetaWeight, names::kQwen35InProjB);
  repeated(names::kDecayWeight, names::kQwen35InProjA);
  repeated(names::kDecayBias, names::kQwen35DtBias);
  repeated(names::kDecayLogScale, names::kQwen35ALog);
  out.push_back(copied(c, recipe_name(i, names::kOutputNormWeight), to(names::kQwen35Norm)));
  out.push_back(copied(c, names::weight(i, LayerModule::o_proj), to(names::kQwen35OutProj)));
}

// A kept softmax layer as Qwen3.5's gated attention: q_proj emits [q_h | gate_h] per head, the gate rows 0 so
// sigmoid(gate) = 1/2, which o_proj x 2 undoes (a power of two: exact in any float format).
void qwen3_5_attention_layer(const Conversion& c, std::int64_t i, DeferredTensors& out) {
  const auto& cfg = c.config;
  const std::int64_t H = cfg.num_attention_heads, d = cfg.head_dim, hidden = cfg.hidden_size;
  const auto& w = c.weights;
  const auto q = names::weight(i, LayerModule::q_proj), o = names::weight(i, LayerModule::o_proj);
  out.push_back(computed(c, q, w.tensor(q).scalar_type(), {2 * H * d, hidden}, {q}, [&w, q, H, d] {
    const auto rows = w.tensor(q).reshape({H, d, -1});
    return at::cat({rows, at::zeros_like(rows)}, 1).reshape({2 * H * d, -1});
  }));
  for (const auto m : {LayerModule::k_proj, LayerModule::v_proj}) out.push_back(copied(c, names::weight(i, m), names::weight(i, m)));
  out.push_back(computed(c, o, w.tensor(o).scalar_type(), w.tensor(o).sizes().vec(), {o}, [&w, o] { return w.tensor(o) * 2; }));
  if (cfg.block.qk_norm == QkNorm::PerHead) {
    for (const auto m : {LayerModule::q_norm, LayerModule::k_norm}) out.push_back(one_plus_norm(c, names::weight(i, m), names::weight(i, m)));
  } else {  // inexact (allowed): Qwen3.5 normalises each head anyway; weight 1
    for (const auto m : {LayerModule::q_norm, LayerModule::k_norm})
      out.push_back(computed(c, names::weight(i, m), at::kFloat, {d}, {}, [d] { return at::zeros({d}, at::kFloat); }));
  }
}

// The config.json keys every layout writes alike: the decoder's sizes, SwiGLU with silu, no attention biases.
nlohmann::ordered_json decoder_config(const ModelConfig& cfg) {
  return {{"vocab_size", cfg.vocab_size},
          {"hidden_size", cfg.hidden_size},
          {"intermediate_size", cfg.intermediate_size},
          {"num_hidden_layers", cfg.num_hidden_layers},
          {"num_attention_heads", cfg.num_attention_heads},
          {"num_key_value_heads", cfg.num_key_value_heads},
          {"hidden_act", "silu"},
          {"max_position_embeddings", cfg.max_position_embeddings},
          {"rms_norm_eps", cfg.rms_norm_eps},
          {"tie_word_embeddings", cfg.tie_word_embeddings},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"use_cache", true}};
}

// rope_parameters: default RoPE at the source's theta; the multimodal sections (all equal for text, which makes
// them plain RoPE) split the rotary half-dimension as Qwen3.5 does.
nlohmann::ordered_json qwen3_5_rope(const ModelConfig& cfg) {
  const auto& rope = cfg.rope;
  const auto half = static_cast<std::int64_t>(std::llround(cfg.head_dim * rope.partial_rotary_factor)) / 2;
  return {{"rope_type", "default"},
          {"rope_theta", rope.theta},
          {"partial_rotary_factor", rope.partial_rotary_factor},
          {"mrope_section", {(half + 2) / 3, (half + 1) / 3, half / 3}},
          {"mrope_interleaved", true}};
}

NativePlan qwen3_5_plan(const Conversion& c) {
  const auto& cfg = c.config;
  NativePlan plan;
  auto& t = plan.tensors;
  t.push_back(copied(c, names::kEmbedTokens, names::kEmbedTokens));
  nlohmann::ordered_json layer_types = nlohmann::ordered_json::array();
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const bool linear = c.converted[static_cast<std::size_t>(i)];
    layer_types.push_back(linear ? "linear_attention" : "full_attention");
    for (const auto m : {LayerModule::input_layernorm, LayerModule::post_attention_layernorm})
      t.push_back(one_plus_norm(c, names::weight(i, m), names::weight(i, m)));
    if (linear)
      qwen3_5_linear_layer(c, i, t);
    else
      qwen3_5_attention_layer(c, i, t);
    for (const auto m : {LayerModule::gate_proj, LayerModule::up_proj, LayerModule::down_proj})
      t.push_back(copied(c, names::weight(i, m), names::weight(i, m)));
  }
  t.push_back(one_plus_norm(c, names::kFinalNorm, names::kFinalNorm));
  if (!cfg.tie_word_embeddings) t.push_back(copied(c, names::kLmHead, names::kLmHead));

  const std::int64_t H = cfg.num_attention_heads;
  auto& j = plan.config;
  j = {{"architectures", {"Qwen3_5ForCausalLM"}}, {"model_type", "qwen3_5_text"}};
  j.update(decoder_config(cfg));
  j.update({{"head_dim", cfg.head_dim},
       {"rope_parameters", qwen3_5_rope(cfg)},
       {"linear_conv_kernel_dim", c.params.at("conv_kernel").get<std::int64_t>()},
       {"linear_key_head_dim", cfg.head_dim},
       {"linear_value_head_dim", cfg.head_dim},
       {"linear_num_key_heads", H},
       {"linear_num_value_heads", H},
       {"layer_types", layer_types}});
  return plan;
}

// GraniteMoeHybrid without experts ---------------------------------------------------------------------------

// Mamba heads in the layout: llama.cpp's granitehybrid asserts d_inner = 2 x hidden, so the H converted heads are
// followed by inert ones (every row feeding them 0, out_proj's columns 0: x = 0 keeps their state 0, and their
// gated, normalised output is 0).
std::int64_t granite_mamba_heads(const ModelConfig& cfg) { return 2 * cfg.hidden_size / cfg.head_dim; }

std::vector<NativeInexact> granite_check(const Conversion& c) {
  const auto& cfg = c.config;
  auto out = shared_checks(c, "Granite");
  if (cfg.block.norm != NormStyle::Weight) add(out, "rms_norm", {}, "the source's norms are (1 + w) or take w in fp32; Granite's are Llama's");
  if ((2 * cfg.hidden_size) % cfg.head_dim != 0 || cfg.num_attention_heads > granite_mamba_heads(cfg))
    add(out, "head_dim", {}, "llama.cpp's granitehybrid needs d_inner = 2 x hidden_size as whole heads of head_dim, at least the query heads");
  bool kept = false;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    if (c.converted[static_cast<std::size_t>(i)]) continue;
    kept = true;
    if (cfg.block.qk_norm != QkNorm::None)
      add(out, names::module_in_layer(LayerModule::q_norm), i, "a kept softmax layer with q/k RMSNorms: Granite's attention has none");
    if (cfg.rope_for(i).partial_rotary_factor != 1.0) add(out, "partial_rotary_factor", i, "Granite's attention rotates the whole head");
  }
  if (kept && cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size)
    add(out, "head_dim", {}, "vLLM's Granite attention assumes head_dim = hidden_size / num_attention_heads");
  return out;
}

// `t` [rows, ...] followed by zero rows up to `total`.
at::Tensor zero_padded_rows(const at::Tensor& t, std::int64_t total) {
  auto shape = t.sizes().vec();
  shape[0] = total - t.size(0);
  return at::cat({t, at::zeros(shape, t.options())});
}

// The mamba2 layer as Granite's mixer: in_proj = [z | x | B | C | dt] (x and B repeated from the kv heads, each
// head its own group of B and C), the conv's [x | B | C] channels likewise, everything padded with inert heads.
void granite_mamba_layer(const Conversion& c, std::int64_t i, DeferredTensors& out) {
  const auto& cfg = c.config;
  const std::int64_t H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, G = cfg.kv_groups(), d = cfg.head_dim;
  const std::int64_t Hm = granite_mamba_heads(cfg), inner = Hm * d, hidden = cfg.hidden_size;
  const std::int64_t K = c.params.at("conv_kernel").get<std::int64_t>();
  const auto& w = c.weights;
  const auto to = [i](const char* part) { return names::granite_mamba(i, part); };
  const auto recipe = [i](const char* name) { return recipe_name(i, name); };
  const auto q = names::weight(i, LayerModule::q_proj), k = names::weight(i, LayerModule::k_proj), v = names::weight(i, LayerModule::v_proj);
  const auto z = recipe(names::kGateWeight), dt = recipe(names::kDtWeight);
  const auto f32 = [&w](const std::string& name) { return w.tensor(name).to(at::kFloat); };
  out.push_back(computed(c, to(names::kGraniteInProj), at::kFloat, {4 * inner + Hm, hidden}, {z, v, k, q, dt}, [=] {
    return at::cat({zero_padded_rows(f32(z), inner), zero_padded_rows(repeat_per_head(f32(v), Hkv, G), inner),
                    zero_padded_rows(repeat_per_head(f32(k), Hkv, G), inner), zero_padded_rows(f32(q), inner),
                    zero_padded_rows(f32(dt), Hm)});
  }));
  // The conversion's conv channels are [x (Hkv d) | B (Hkv d) | C (H d)].
  const auto channels = [=](const at::Tensor& t) {
    return at::cat({zero_padded_rows(repeat_per_head(t.narrow(0, 0, Hkv * d), Hkv, G), inner),
                    zero_padded_rows(repeat_per_head(t.narrow(0, Hkv * d, Hkv * d), Hkv, G), inner),
                    zero_padded_rows(t.narrow(0, 2 * Hkv * d, H * d), inner)});
  };
  const auto conv = recipe(names::kConvWeight), conv_bias = recipe(names::kConvBias);
  out.push_back(computed(c, to(names::kGraniteConvWeight), at::kFloat, {3 * inner, 1, K}, {conv}, [=] { return channels(f32(conv)).unsqueeze(1); }));
  out.push_back(computed(c, to(names::kGraniteConvBias), at::kFloat, {3 * inner}, {conv_bias}, [=] { return channels(f32(conv_bias)); }));
  const auto per_head = [&](const char* from, const char* part) {
    const auto name = recipe(from);
    out.push_back(computed(c, to(part), at::kFloat, {Hm}, {name}, [=] { return zero_padded_rows(f32(name), Hm); }));
  };
  per_head(names::kDtBias, names::kGraniteDtBias);
  per_head(names::kDecayLogScale, names::kGraniteALog);
  per_head(names::kSkip, names::kGraniteSkip);
  const auto norm = recipe(names::kOutputNormWeight), o = names::weight(i, LayerModule::o_proj);
  out.push_back(computed(c, to(names::kGraniteNorm), at::kFloat, {inner}, {norm}, [=] { return zero_padded_rows(f32(norm), inner); }));
  // in_proj mixes the fp32 recipe rows (z, dt) with the source's: fp32 keeps both exact. out_proj is o_proj
  // and zero columns alone: its own dtype.
  out.push_back(computed(c, to(names::kGraniteOutProj), w.tensor(o).scalar_type(), {hidden, inner}, {o}, [=, &w] {
    return zero_padded_rows(w.tensor(o).t(), inner).t().contiguous();
  }));
}

NativePlan granite_plan(const Conversion& c) {
  const auto& cfg = c.config;
  NativePlan plan;
  auto& t = plan.tensors;
  t.push_back(copied(c, names::kEmbedTokens, names::kEmbedTokens));
  nlohmann::ordered_json layer_types = nlohmann::ordered_json::array();
  bool any_attention = false;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const bool mamba = c.converted[static_cast<std::size_t>(i)];
    any_attention |= !mamba;
    layer_types.push_back(mamba ? "mamba" : "attention");
    for (const auto m : {LayerModule::input_layernorm, LayerModule::post_attention_layernorm})
      t.push_back(copied(c, names::weight(i, m), names::weight(i, m)));
    if (mamba) {
      granite_mamba_layer(c, i, t);
    } else {
      for (const auto m : {LayerModule::q_proj, LayerModule::k_proj, LayerModule::v_proj, LayerModule::o_proj})
        t.push_back(copied(c, names::weight(i, m), names::weight(i, m)));
    }
    const auto gate = names::weight(i, LayerModule::gate_proj), up = names::weight(i, LayerModule::up_proj);
    const auto& w = c.weights;
    t.push_back(computed(c, names::granite_shared_mlp(i, names::kGraniteMlpIn), w.tensor(gate).scalar_type(),
                         {2 * cfg.intermediate_size, cfg.hidden_size}, {gate, up}, [&w, gate, up] { return at::cat({w.tensor(gate), w.tensor(up)}); }));
    t.push_back(copied(c, names::weight(i, LayerModule::down_proj), names::granite_shared_mlp(i, names::kGraniteMlpOut)));
  }
  t.push_back(copied(c, names::kFinalNorm, names::kFinalNorm));
  if (!cfg.tie_word_embeddings) t.push_back(copied(c, names::kLmHead, names::kLmHead));

  const std::int64_t Hm = granite_mamba_heads(cfg);
  // llama.cpp's converter keeps RoPE in a hybrid only when the architectures name Bamba too (runtimes load the first).
  nlohmann::ordered_json architectures = {"GraniteMoeHybridForCausalLM"};
  if (any_attention) architectures.push_back("BambaForCausalLM");
  plan.config = {{"architectures", architectures}, {"model_type", "granitemoehybrid"}};
  plan.config.update(decoder_config(cfg));
  plan.config.update({{"shared_intermediate_size", cfg.intermediate_size},
                      {"num_local_experts", 0},
                      {"num_experts_per_tok", 0},
                      {"attention_multiplier", cfg.block.attention_scale.value_or(1.0 / std::sqrt(double(cfg.head_dim)))},
                      {"embedding_multiplier", cfg.block.embedding_scale},
                      {"residual_multiplier", cfg.block.residual_scale},
                      {"logits_scaling", cfg.block.logits_divisor},
                      {"position_embedding_type", "rope"},
                      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", cfg.rope.theta}}},
                      {"mamba_n_heads", Hm},
                      {"mamba_d_head", cfg.head_dim},
                      {"mamba_n_groups", Hm},
                      {"mamba_d_state", cfg.head_dim},
                      {"mamba_d_conv", c.params.at("conv_kernel").get<std::int64_t>()},
                      {"mamba_expand", 2},
                      {"mamba_chunk_size", 64},
                      {"mamba_conv_bias", true},
                      {"mamba_proj_bias", false},
                      {"layer_types", layer_types}});
  return plan;
}

const std::vector<NativeLayout>& layouts() {
  static const std::vector<NativeLayout> all{{"qwen3_5", "gated-deltanet", qwen3_5_check, qwen3_5_plan, [](const ModelConfig& c) { return c.kv_groups(); }},
                                             {"granitehybrid", "mamba2", granite_check, granite_plan,
                                              // its inert heads: 2 hidden / head_dim heads of [d, d] for H
                                              [](const ModelConfig& c) { return granite_mamba_heads(c) / c.num_attention_heads; }}};
  return all;
}

const NativeLayout& find_layout(const std::string& name) {
  for (const auto& l : layouts())
    if (l.name == name) return l;
  std::string known;
  for (const auto& l : layouts()) known += (known.empty() ? "" : ", ") + l.name;
  throw InputError("command line", "--layout", "unknown layout '" + name + "' (known: " + known + ")");
}

// The conversion's own keys the layout keeps: token ids and dtype.
void copy_token_keys(const std::filesystem::path& config_json, nlohmann::ordered_json& out) {
  const auto doc = nlohmann::ordered_json::parse(std::ifstream(config_json));
  for (const auto* key : {"bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype"})
    if (doc.contains(key) && !doc[key].is_null()) out[key] = doc[key];
}

}  // namespace

const std::vector<std::string>& native_layouts() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& l : layouts()) n.push_back(l.name);
    return n;
  }();
  return names;
}

std::string NativeInexact::line() const {
  return (layer ? "layer " + std::to_string(*layer) + ": " : std::string()) + field + ": " + reason;
}

NativeExportResult export_native(const NativeExportOptions& options) {
  const auto& layout = find_layout(options.layout);
  const auto config_json = options.model / "config.json";
  const auto config = load_model_config(config_json);
  if (config.linearize.is_null())
    throw InputError(config_json.string(), "linearize",
                     "not a conversion; export-native writes converted models (convert with --recipe " + layout.recipe + ")");
  const auto recipe = recipe_of(config);
  if (recipe.recipe->name != layout.recipe)
    throw InputError(config_json.string(), "linearize.recipe",
                     "layout " + layout.name + " holds " + layout.recipe + " conversions; this is " + recipe.recipe->name);
  if (std::filesystem::exists(options.model / kPeftAdapterDir))
    throw InputError((options.model / kPeftAdapterDir).string(), "adapter",
                     "export-native takes merged weights; distill with merge: true (or merge the adapter) first");
  if (std::filesystem::exists(options.out) && !options.force)
    throw InputError(options.out.string(), "--out", "exists (pass --force to overwrite it)");

  const auto weights = CheckpointWeights::open(options.model);
  Conversion c{config, weights, recipe.params, std::vector<bool>(static_cast<std::size_t>(config.num_hidden_layers), false)};
  for (const auto i : converted_layers(config)) c.converted[static_cast<std::size_t>(i)] = true;

  // What the layouts have no slot for, so that --allow-inexact cannot write it either.
  const auto unwritable = [&](const std::string& field, const std::string& what) {
    throw InputError(config_json.string(), field, what + "; layout " + layout.name + " has no place for it (not even with --allow-inexact)");
  };
  if (config.moe.experts > 0) unwritable("num_experts", "routed MoE MLPs: the export writes one dense MLP per layer");
  if (config.block.fused_projections)
    unwritable(names::module_in_layer(LayerModule::qkv_proj), "fused projections (Phi-3): the export writes q, k, v and gate, up apart");

  NativeExportResult result;
  result.inexact = layout.check(c);
  if (!result.inexact.empty() && !options.allow_inexact) {
    const auto& first = result.inexact.front();
    const auto more = result.inexact.size() > 1 ? " (and " + std::to_string(result.inexact.size() - 1) + " more)" : std::string();
    throw InputError(config_json.string(), first.field,
                     (first.layer ? "layer " + std::to_string(*first.layer) + ": " : std::string()) + first.reason +
                         "; layout " + layout.name + " cannot hold it exactly (--allow-inexact writes it anyway)" + more);
  }
  auto plan = layout.plan(c);
  for (const bool linear : c.converted) ++(linear ? result.linear_layers : result.attention_layers);
  result.state_growth = layout.state_growth(config);
  copy_token_keys(config_json, plan.config);
  plan.config["linearize"] = {{"layout", layout.name},
                              {"recipe", layout.recipe},
                              {"conversion", std::filesystem::absolute(options.model).string()},
                              {"tool_version", LINEARIZE_VERSION},
                              {"state_growth", result.state_growth},
                              {"inexact", nlohmann::ordered_json::array()}};
  for (const auto& x : result.inexact) plan.config["linearize"]["inexact"].push_back(x.line());

  std::filesystem::create_directories(options.out);
  std::filesystem::remove(options.out / "config.json");  // the directory is complete only once it is written
  std::uint64_t total = 0;
  for (const auto& t : plan.tensors) total += t.nbytes();
  write_checkpoint(options.out, plan.tensors, {{"format", "pt"}}, options.max_shard_bytes,
                   [&](const std::string& name, std::uint64_t bytes) {
                     if (weights.contains(name)) weights.release(name);
                     result.bytes += bytes;
                     if (options.progress) options.progress(result.bytes, total);
                   });
  copy_passthrough_files(options.model, options.out);
  write_file_atomic(options.out / "config.json", plan.config.dump(2) + "\n");
  return result;
}

}  // namespace linearize
