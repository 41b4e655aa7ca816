#include "converter/onnx_export.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "converter/linearized.h"
#include "converter/model/block_program.h"
#include "converter/model/lora.h"
#include "converter/onnx_graph.h"
#include "formats/atomic_file.h"
#include "formats/error.h"

#ifndef LINEARIZE_VERSION
#define LINEARIZE_VERSION "dev"
#endif

namespace linearize {
namespace {

using names::LayerModule;
using onnx_model::ElementType;

const RecipeParams kNoRecipeParams = nlohmann::json::object();

// The source's softmax attention with its whole KV cache: query i (absolute index P + i, P = the cache's
// length) sees key j <= P + i, within the window on sliding layers, and not a padded one (attention_mask).
class SoftmaxLayers {
 public:
  explicit SoftmaxLayers(OnnxModelContext& context) : context_(context) {}

  std::string emit(std::int64_t layer, const std::string& x) {
    auto& o = context_.ops;
    const auto& c = context_.config;
    OnnxLayer l(context_, layer, kNoRecipeParams);
    auto heads = l.project_heads(x);
    const auto q = l.rope(heads.q), k = l.rope(heads.k);
    const std::string past = "past_key_values." + std::to_string(layer), present = "present." + std::to_string(layer);
    context_.carried[layer].insert(OnnxModelContext::kKeyValues);
    auto& graph = context_.model.graph();
    const std::vector<Dim> past_shape{"batch", c.num_key_value_heads, "past_sequence", c.head_dim};
    const std::vector<Dim> present_shape{"batch", c.num_key_value_heads, "total_sequence", c.head_dim};
    graph.input(past + ".key", ElementType::f32, past_shape);
    graph.input(past + ".value", ElementType::f32, past_shape);
    const auto keys = o.concat({past + ".key", k}, 2), values = o.concat({past + ".value", heads.v}, 2);
    for (const auto& [part, v] : {std::pair{".key", keys}, std::pair{".value", values}}) {
      graph.rename(v, present + part);
      graph.output(present + part, ElementType::f32, present_shape);
    }
    const std::int64_t Hkv = c.num_key_value_heads, G = c.kv_groups(), D = c.head_dim;
    const auto grouped = [&](const std::string& t, std::int64_t g) { return o.reshape(t, {0, Hkv, g, -1, D}); };
    const double scale = c.block.attention_scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));
    const auto scores = o.mul(o.matmul(grouped(q, G), o.transpose(grouped(keys, 1), {0, 1, 2, 4, 3})),
                              o.f32(static_cast<float>(scale)));
    // A masked score is the lowest float, not -inf: a padded query that sees no key then gets a uniform row
    // instead of NaN, and NaN never reaches a state.
    const std::int64_t window =
        c.layer_types[static_cast<std::size_t>(layer)] == AttentionKind::Sliding ? c.sliding_window.value_or(0) : 0;
    const auto masked = o.op("Where", {mask(window), scores, o.f32(std::numeric_limits<float>::lowest())});
    // gpt-oss's sink: its logit as one more column of every row ([B, Hkv, G, S, 1]), in the softmax, then dropped.
    const auto sinked = [&] {
      const auto sink = o.add(o.mul(o.slice(masked, -1, 0, 1), o.f32(0.0f)), o.reshape(l.attention_sinks(), {1, Hkv, G, 1, 1}));
      return o.slice(o.softmax(o.concat({masked, sink}, -1)), -1, 0, -1);
    };
    const auto weights = c.block.attention_sinks ? sinked() : o.softmax(masked);
    const auto out = o.matmul(weights, grouped(values, 1));
    return l.project_output(o.reshape(out, {0, c.num_attention_heads, -1, D}));
  }

 private:
  // [B, 1, 1, S, T] bool, one per window size (0: none).
  std::string mask(std::int64_t window) {
    if (const auto it = masks_.find(window); it != masks_.end()) return it->second;
    auto& o = context_.ops;
    const auto S = o.squeeze(o.dim(context_.input_ids, 1), {0}), T = o.squeeze(o.dim(context_.attention_mask, 1), {0});
    const auto rows = o.add(o.op("Range", {o.scalar_i64(0), S, o.scalar_i64(1)}), o.sub(T, S));
    const auto cols = o.op("Range", {o.scalar_i64(0), T, o.scalar_i64(1)});
    const auto back = o.sub(o.unsqueeze(rows, {1}), o.unsqueeze(cols, {0}));  // P + i - j, [S, T]
    auto visible = o.op("GreaterOrEqual", {back, o.scalar_i64(0)});
    if (window > 0) visible = o.op("And", {visible, o.op("Less", {back, o.scalar_i64(window)})});
    const auto not_padding = o.unsqueeze(o.cast(context_.attention_mask, ElementType::boolean), {1, 2, 3});  // [B,1,1,1,T]
    return masks_[window] = o.op("And", {visible, not_padding});
  }

  OnnxModelContext& context_;
  std::map<std::int64_t, std::string> masks_;
};

// act(gate) * up (GatedActivation; gate and up already projected).
std::string gated(OnnxLayer& layer, const GatedActivation& activation, const std::string& gate, const std::string& up) {
  auto& o = layer.ops();
  std::string act;
  if (activation.kind == MlpActivation::ClampedSwiglu) {
    // GptOssExperts._apply_gate: g = min(gate, limit), g sigmoid(alpha g) (clamp(up, -limit, limit) + 1).
    const auto limit = static_cast<float>(activation.limit);
    const auto g = o.op("Min", {gate, o.f32(limit)});
    const auto u = o.op("Clip", {up, o.f32(-limit), o.f32(limit)});
    return o.mul(o.mul(g, o.sigmoid(o.mul(g, o.f32(static_cast<float>(activation.alpha))))), o.add(u, o.f32(1.0f)));
  }
  if (activation.kind == MlpActivation::GeluTanh && layer.opset() >= 20) {
    static const std::vector<Attribute> tanh_approximation{{"approximate", std::string("tanh")}};
    act = o.op("Gelu", {gate}, tanh_approximation);
  } else if (activation.kind == MlpActivation::GeluTanh) {
    // Before opset 20 (no Gelu): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), gelu_pytorch_tanh's formula.
    const auto cube = o.mul(o.mul(gate, gate), gate);
    const auto inner = o.mul(o.f32(0.7978845608028654f), o.add(gate, o.mul(o.f32(0.044715f), cube)));
    act = o.mul(o.mul(o.f32(0.5f), gate), o.add(o.f32(1.0f), o.op("Tanh", {inner})));
  } else {
    act = o.mul(gate, o.sigmoid(gate));  // SiLU
  }
  return o.mul(act, up);
}

// down(act(gate x) * up x) on the given matrices and biases (empty: none).
std::string gated_mlp(OnnxLayer& layer, const GatedActivation& activation, const std::string& x, const std::string& gate_weight,
                      const std::string& gate_bias, const std::string& up_weight, const std::string& up_bias,
                      const std::string& down_weight, const std::string& down_bias) {
  auto& o = layer.ops();
  return o.linear(gated(layer, activation, o.linear(x, gate_weight, gate_bias), o.linear(x, up_weight, up_bias)), down_weight,
                  down_bias);
}

// Expert e of stacked tensors (gpt-oss): x @ gate_up_proj[e] + its bias, gate and up its even and odd columns; then
// @ down_proj[e] + its bias.
std::string stacked_expert(OnnxLayer& layer, const std::string& x, std::int64_t e) {
  using names::StackedExperts;
  auto& o = layer.ops();
  const auto pick = [&](StackedExperts tensor) { return layer.stacked_expert(e, tensor); };
  const auto gate_up = o.add(o.matmul(x, pick(StackedExperts::gate_up_proj)), pick(StackedExperts::gate_up_proj_bias));
  const auto hidden = gated(layer, layer.config().expert_activation(), o.strided(gate_up, -1, 0, 2), o.strided(gate_up, -1, 1, 2));
  return o.add(o.matmul(hidden, pick(StackedExperts::down_proj)), pick(StackedExperts::down_proj_bias));
}

// A routed MoE MLP (MoeConfig) as dense masked experts: every expert runs on every token and is weighted by its routing
// weight, 0 where the token did not choose it (softmax, TopK, renormalise, ScatterElements into a [B, S, experts]
// weight). Exact, standard operators, one static graph; the cost is every expert's, experts / top_k times the routed
// compute (16x for Qwen3-30B-A3B): the graph proves parity, it is not a fast MoE server (per-expert Gather would need
// data-dependent shapes inside the graph).
std::string routed_mlp(OnnxLayer& layer, const std::string& x) {
  using names::ExpertProjection;
  auto& o = layer.ops();
  const auto& moe = layer.config().moe;
  const auto probabilities = o.softmax(o.linear(x, layer.router(), layer.router_bias()));
  const auto top = o.graph().node("TopK", {probabilities, o.i64({moe.top_k})}, 2, {{"axis", std::int64_t{-1}}});
  auto weights = top[0];
  if (moe.normalize_top_k) weights = o.div(weights, o.reduce_sum(weights, -1));
  const auto dense = o.op("ScatterElements", {o.mul(probabilities, o.f32(0.0f)), top[1], weights}, {{"axis", std::int64_t{-1}}});
  std::string sum;
  for (std::int64_t e = 0; e < moe.experts; ++e) {
    const auto y = layer.config().block.expert_names == names::ExpertNames::stacked
                       ? stacked_expert(layer, x, e)
                       : gated_mlp(layer, layer.config().expert_activation(), x, layer.expert(e, ExpertProjection::gate), "",
                                   layer.expert(e, ExpertProjection::up), "", layer.expert(e, ExpertProjection::down), "");
    const auto weighted = o.mul(y, o.slice(dense, -1, e, e + 1));
    sum = sum.empty() ? weighted : o.add(sum, weighted);
  }
  return sum;
}

std::string mlp(OnnxLayer& layer, const std::string& x) {
  if (layer.config().is_sparse(layer.index())) return routed_mlp(layer, x);
  return gated_mlp(layer, layer.config().block.activation, x, layer.weight(LayerModule::gate_proj), layer.bias(LayerModule::gate_proj), layer.weight(LayerModule::up_proj),
                   layer.bias(LayerModule::up_proj), layer.weight(LayerModule::down_proj), layer.bias(LayerModule::down_proj));
}

// What onnxruntime-genai (0.18) carries between calls, finding each by its input name: a layer's key/value
// cache (past_key_values.{i}.key/.value, grown by concatenation) and a recurrent layer's two fixed-shape states
// past.{i}.conv and past.{i}.recurrent, which it binds as a pair (a recurrent input without its conv is an
// error there). Any other state has no description: the reason, naming the layer, or nothing when the graph fits.
std::optional<std::string> genai_unsupported_state(const std::map<std::int64_t, std::set<std::string>>& carried) {
  const std::set<std::string> cache{OnnxModelContext::kKeyValues}, recurrent{"conv", "recurrent"};
  for (const auto& [layer, kinds] : carried) {
    if (kinds == cache || kinds == recurrent) continue;
    std::string listed;
    for (const auto& k : kinds) listed += (listed.empty() ? "" : ", ") + k;
    return "layer " + std::to_string(layer) + " carries " + listed +
           "; onnxruntime-genai carries a key/value cache, or a recurrent layer's conv and recurrent state as one pair";
  }
  return std::nullopt;
}

// onnxruntime-genai's genai_config.json (its config reference and its model builder's output), for a graph whose
// states it can carry (genai_unsupported_state).
nlohmann::ordered_json genai_config(const ModelConfig& c, const std::string& graph_file, bool converted) {
  nlohmann::ordered_json model;
  if (c.bos_token_id) model["bos_token_id"] = *c.bos_token_id;
  model["context_length"] = c.max_position_embeddings;
  nlohmann::ordered_json inputs = {{"input_ids", "input_ids"},
                                   {"attention_mask", "attention_mask"},
                                   {"position_ids", "position_ids"},
                                   {"past_key_names", "past_key_values.%d.key"},
                                   {"past_value_names", "past_key_values.%d.value"}};
  nlohmann::ordered_json outputs = {{"logits", "logits"}, {"present_key_names", "present.%d.key"}, {"present_value_names", "present.%d.value"}};
  if (converted) {
    inputs["past_conv_names"] = "past.%d.conv";
    inputs["past_recurrent_names"] = "past.%d.recurrent";
    outputs["present_conv_names"] = "present.%d.conv";
    outputs["present_recurrent_names"] = "present.%d.recurrent";
  }
  model["decoder"] = {
      {"session_options", {{"log_id", "onnxruntime-genai"}, {"provider_options", nlohmann::json::array()}}},
      {"filename", graph_file},
      {"head_size", c.head_dim},
      {"hidden_size", c.hidden_size},
      {"inputs", inputs},
      {"outputs", outputs},
      {"num_attention_heads", c.num_attention_heads},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_key_value_heads", c.num_key_value_heads}};
  if (!c.eos_token_ids.empty()) {
    model["eos_token_id"] = c.eos_token_ids.size() == 1 ? nlohmann::ordered_json(c.eos_token_ids.front()) : nlohmann::ordered_json(c.eos_token_ids);
    model["pad_token_id"] = c.eos_token_ids.front();
  }
  // "decoder", genai's generic decoder-only type, for sources and conversions alike: the graph is ours, so the type
  // picks no family-specific inputs, and genai knows neither "linearize" nor several source families (olmo3, smollm3).
  model["type"] = "decoder";
  model["vocab_size"] = c.vocab_size;
  // present = concat(past, new): the caches are not shared buffers of a fixed length.
  nlohmann::ordered_json search = {{"do_sample", false}, {"max_length", c.max_position_embeddings}, {"min_length", 0},
                                   {"num_beams", 1}, {"num_return_sequences", 1}, {"past_present_share_buffer", false},
                                   {"repetition_penalty", 1.0}, {"temperature", 1.0}, {"top_k", 1}, {"top_p", 1.0}};
  return {{"model", model}, {"search", search}};
}

// The opset the export writes, checked against what the options ask of it.
std::int64_t export_opset(const OnnxExportOptions& options) {
  const auto opset = options.opset.value_or(options.linear_attention_operator ? kLinearAttentionOpset : kOnnxDefaultOpset);
  if (opset < 18) throw InputError("command line", "--opset", "must be 18 or later (got " + std::to_string(opset) + ")");
  if (options.linear_attention_operator && opset < kLinearAttentionOpset)
    throw InputError("command line", "--opset", "the LinearAttention operator needs opset 27 or later (got " + std::to_string(opset) + ")");
  if (std::filesystem::exists(options.model / kPeftAdapterDir))
    throw InputError((options.model / kPeftAdapterDir).string(), "adapter",
                     "export-onnx takes merged weights; distill with --merge (or merge the adapter) first");
  return opset;
}

// A converted model's recipe (none for a plain checkpoint), and which layers it converted.
std::optional<RecipeOfModel> converted_recipe(const ModelConfig& config, const std::filesystem::path& config_path,
                                              std::vector<bool>& converted) {
  converted.assign(static_cast<std::size_t>(config.num_hidden_layers), false);
  if (config.linearize.is_null()) return std::nullopt;
  auto recipe = recipe_of(config);
  for (const auto layer : converted_layers(config)) {
    converted[static_cast<std::size_t>(layer)] = true;
    if (!recipe.recipe->emit_onnx)
      throw InputError(config_path.string(), "linearize.recipe",
                       "layer " + std::to_string(layer) + ": mixer '" + recipe.recipe->name + "' has no ONNX form yet");
  }
  return recipe;
}

}  // namespace

OnnxExportResult export_onnx(const OnnxExportOptions& options) {
  const auto config_path = options.model / "config.json";
  const auto config = load_model_config(config_path);
  const auto opset = export_opset(options);
  std::vector<bool> converted;
  const auto recipe = converted_recipe(config, config_path, converted);
  const auto checkpoint = CheckpointWeights::open(options.model);
  onnx_model::Model model(opset, LINEARIZE_VERSION);
  OnnxModelContext context(model, config, checkpoint, options.fp16);
  context.opset = opset;
  context.linear_attention_operator = options.linear_attention_operator;
  auto& o = context.ops;
  auto& graph = model.graph();
  graph.input(context.input_ids, ElementType::i64, {"batch", "sequence"});
  graph.input(context.attention_mask, ElementType::i64, {"batch", "total_sequence"});
  graph.input(context.position_ids, ElementType::i64, {"batch", "sequence"});

  const auto& block = config.block;
  const double eps = config.rms_norm_eps;
  const auto norm = [&](const std::string& x, const std::string& weight_name) {
    return o.rms_norm(x, context.weight(weight_name), eps, block.norm);
  };
  const auto embeddings = context.matrix(names::kEmbedTokens);
  auto h = o.op("Gather", {embeddings, context.input_ids});
  if (o.is_half(embeddings)) h = o.cast(h, ElementType::f32);
  if (block.embedding_scale != 1.0) h = o.mul(h, o.f32(static_cast<float>(block.embedding_scale)));
  SoftmaxLayers softmax(context);
  OnnxExportResult result;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    OnnxLayer layer(context, i, recipe ? recipe->params : kNoRecipeParams);
    const bool is_converted = converted[static_cast<std::size_t>(i)];
    // The block's primitives (converter/model/block_program.h) on this layer's values in the graph.
    using RmsNorm = decltype(norm);
    struct Ops {
      using Value = std::string;
      OnnxLayer& layer;
      const RmsNorm& rms_norm;
      const std::function<std::string(const std::string&)> emit_mixer;
      std::string norm(const std::string& v, BlockNorm which) { return rms_norm(v, names::weight(layer.index(), norm_module(which))); }
      std::string mixer(const std::string& v) { return emit_mixer(v); }
      std::string mlp(const std::string& v) { return linearize::mlp(layer, v); }
      std::string scale(const std::string& v, double s) { return layer.ops().mul(v, layer.ops().f32(static_cast<float>(s))); }
      std::string add(const std::string& a, const std::string& b) { return layer.ops().add(a, b); }
    } ops{layer, norm, [&](const std::string& v) { return is_converted ? recipe->recipe->emit_onnx(layer, v) : softmax.emit(i, v); }};
    h = block_program(ops, block, h).out;
  }
  h = norm(h, names::kFinalNorm);
  auto logits = o.linear(h, context.matrix(config.tie_word_embeddings ? names::kEmbedTokens : names::kLmHead));
  if (block.logits_divisor != 1.0) logits = o.div(logits, o.f32(static_cast<float>(block.logits_divisor)));
  if (block.final_logit_softcap) {
    const auto cap = o.f32(static_cast<float>(*block.final_logit_softcap));
    logits = o.mul(o.op("Tanh", {o.div(logits, cap)}), cap);
  }
  graph.rename(logits, "logits");
  graph.output("logits", ElementType::f32, {"batch", "sequence", config.vocab_size});

  model.metadata(kOnnxDtypeKey, options.fp16 ? "fp16" : "fp32");
  if (recipe) {
    model.metadata(kOnnxRecipeKey, recipe->recipe->name);
    model.metadata(kOnnxParamsKey, recipe->params.dump());
  }
  result.path = options.out.empty() ? options.model / kOnnxFileName : options.out;
  result.nodes = static_cast<std::int64_t>(graph.node_count());
  result.saved = model.save(result.path, options.save);
  result.check = onnx_model::check_file(result.path);
  if (!result.check.ok()) {
    std::filesystem::remove(result.path);
    if (!result.saved.external_data.empty()) std::filesystem::remove(result.saved.external_data);
    return result;
  }
  if (const auto unsupported = genai_unsupported_state(context.carried)) {
    result.genai_unsupported = *unsupported;
  } else {
    result.genai_config = result.path.parent_path() / "genai_config.json";
    write_file_atomic(result.genai_config, genai_config(config, result.path.filename().string(), recipe.has_value()).dump(4) + "\n");
  }
  return result;
}

}  // namespace linearize
