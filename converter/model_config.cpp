#include "converter/model_config.h"

#include <algorithm>
#include <cmath>

#include "formats/error.h"
#include "converter/architectures/registry.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

std::int64_t positive(const JsonObject& obj, const std::string& key, std::int64_t value) {
  if (value <= 0) obj.fail(key, "must be positive, got " + std::to_string(value));
  return value;
}

RopeType parse_rope_type(const JsonObject& obj, const std::string& key, const std::string& name) {
  if (name == "default") return RopeType::Default;
  if (name == "linear") return RopeType::Linear;
  if (name == "dynamic") return RopeType::Dynamic;
  if (name == "llama3") return RopeType::Llama3;
  if (name == "yarn") return RopeType::Yarn;
  if (name == "longrope") return RopeType::LongRope;
  obj.fail(key, "unsupported RoPE type '" + name + "' (supported: default, linear, dynamic, llama3, yarn, longrope)");
}

// One RoPE: the top-level rope_theta (else the family's default) / partial_rotary_factor, overridden by `params`
// where given.
RopeConfig parse_rope(const JsonObject& root, const std::optional<JsonObject>& params, std::int64_t max_positions,
                      double default_theta) {
  RopeConfig rope;
  const auto top_theta = root.get_optional_double("rope_theta");
  rope.theta = top_theta.value_or(default_theta);
  rope.partial_rotary_factor = root.get_optional_double("partial_rotary_factor").value_or(1.0);
  if (!params) return rope;
  const JsonObject& p = *params;

  if (const auto t = p.get_optional_double("rope_theta")) rope.theta = *t;
  if (const auto f = p.get_optional_double("partial_rotary_factor")) rope.partial_rotary_factor = *f;
  std::string type_key = p.has("rope_type") ? "rope_type" : "type";
  const std::string type_name = p.has(type_key) ? p.get_string(type_key) : "default";
  rope.type = parse_rope_type(p, type_key, type_name);

  if (rope.type == RopeType::LongRope) {
    // Phi3Config's top-level original_max_position_embeddings wins over the parameters' (standardize_rope_params).
    rope.original_max_position_embeddings = root.get_optional_int("original_max_position_embeddings")
                                                .value_or(p.get_optional_int("original_max_position_embeddings").value_or(max_positions));
    if (*rope.original_max_position_embeddings <= 0) p.fail("original_max_position_embeddings", "must be positive");
    rope.short_factor = p.get_double_list("short_factor");
    rope.long_factor = p.get_double_list("long_factor");
    rope.factor = p.get_optional_double("factor").value_or(0.0);  // 0: max_position_embeddings / the original
    rope.attention_factor = p.get_optional_double("attention_factor");
  } else if (rope.type != RopeType::Default) {
    rope.factor = p.get_double("factor");
    if (rope.factor < 1.0 && rope.type != RopeType::Llama3) p.fail("factor", "must be >= 1, got " + std::to_string(rope.factor));
    if (rope.factor <= 0.0) p.fail("factor", "must be positive");
  }
  if (rope.type == RopeType::Llama3 || rope.type == RopeType::Yarn) {
    rope.original_max_position_embeddings =
        p.get_optional_int("original_max_position_embeddings").value_or(max_positions);
    if (*rope.original_max_position_embeddings <= 0) p.fail("original_max_position_embeddings", "must be positive");
  }
  if (rope.type == RopeType::Llama3) {
    rope.low_freq_factor = p.get_double("low_freq_factor");
    rope.high_freq_factor = p.get_double("high_freq_factor");
    if (!(*rope.high_freq_factor > *rope.low_freq_factor))
      p.fail("high_freq_factor", "must be greater than low_freq_factor");
  }
  if (rope.type == RopeType::Yarn) {
    rope.attention_factor = p.get_optional_double("attention_factor");
    rope.beta_fast = p.get_optional_double("beta_fast").value_or(32.0);
    rope.beta_slow = p.get_optional_double("beta_slow").value_or(1.0);
    rope.mscale = p.get_optional_double("mscale");
    rope.mscale_all_dim = p.get_optional_double("mscale_all_dim");
    rope.truncate = p.get_bool("truncate", true);
    if (rope.beta_fast < rope.beta_slow) p.fail("beta_fast", "must be >= beta_slow");
  }
  if (!(rope.theta > 0.0)) p.fail("rope_theta", "must be positive");
  if (!(rope.partial_rotary_factor > 0.0 && rope.partial_rotary_factor <= 1.0))
    p.fail("partial_rotary_factor", "must be in (0, 1]");
  return rope;
}

std::vector<std::int64_t> parse_token_ids(const JsonObject& root, const std::string& key) {
  if (!root.has(key)) return {};
  const auto& v = root.raw().at(key);
  if (v.is_number_integer()) return {v.get<std::int64_t>()};
  if (!v.is_array()) root.fail(key, "expected an integer or a list of integers");
  std::vector<std::int64_t> out;
  for (const auto& id : v) {
    if (!id.is_number_integer()) root.fail(key, "expected an integer or a list of integers");
    out.push_back(id.get<std::int64_t>());
  }
  return out;
}

}  // namespace

std::optional<std::int64_t> read_sliding_window(const JsonObject& root, const ConfigDefaults& defaults) {
  const auto window = root.has("sliding_window")            ? std::optional<std::int64_t>(root.get_int("sliding_window"))
                      : root.raw().contains("sliding_window") ? std::nullopt  // explicit null: no window
                                                              : defaults.sliding_window;
  if (window && *window <= 0) root.fail("sliding_window", "must be positive or null");
  return window;
}

void read_qwen_window_layers(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  const auto window = read_sliding_window(root, defaults);
  cfg.use_sliding_window = root.get_bool("use_sliding_window", false);
  cfg.max_window_layers = root.get_optional_int("max_window_layers").value_or(defaults.max_window_layers);
  cfg.sliding_window = cfg.use_sliding_window ? window : std::nullopt;
  if (read_layer_types(root, cfg)) return;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    cfg.layer_types.push_back(cfg.sliding_window && i >= *cfg.max_window_layers ? AttentionKind::Sliding
                                                                                : AttentionKind::Full);
}

void read_moe(const JsonObject& root, std::int64_t default_experts, std::int64_t default_top_k, const char* width_key,
              std::int64_t default_width, ModelConfig& cfg) {
  auto& moe = cfg.moe;
  // Each MoE config class maps one name onto the other (attribute_map), and saves whichever is its own.
  const auto experts = root.get_optional_int("num_experts"), local = root.get_optional_int("num_local_experts");
  const char* experts_key = experts ? "num_experts" : "num_local_experts";
  if (experts && local && *experts != *local) root.fail("num_local_experts", "differs from num_experts");
  moe.experts = experts.value_or(local.value_or(default_experts));
  if (moe.experts <= 0) root.fail(experts_key, "must be positive (a dense model is its dense family)");
  moe.top_k = root.get_optional_int("num_experts_per_tok").value_or(default_top_k);
  if (moe.top_k <= 0 || moe.top_k > moe.experts)
    root.fail("num_experts_per_tok", "must be in 1.." + std::to_string(moe.experts) + " (the experts)");
  moe.intermediate_size = width_key ? root.get_optional_int(width_key).value_or(default_width) : cfg.intermediate_size;
  if (moe.intermediate_size <= 0) root.fail(width_key ? width_key : "intermediate_size", "must be positive");
  moe.sparse_layers.assign(static_cast<std::size_t>(cfg.num_hidden_layers), true);
}

void read_interleaved_layers(const JsonObject& root, const ConfigDefaults& defaults, std::int64_t full_every, ModelConfig& cfg) {
  cfg.sliding_window = read_sliding_window(root, defaults);
  if (read_layer_types(root, cfg)) return;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    cfg.layer_types.push_back((i + 1) % full_every != 0 && cfg.sliding_window ? AttentionKind::Sliding : AttentionKind::Full);
}

bool read_layer_types(const JsonObject& root, ModelConfig& cfg) {
  if (!root.has("layer_types")) return false;
  const auto names = root.get_string_list("layer_types");
  if (names.size() != static_cast<std::size_t>(cfg.num_hidden_layers))
    root.fail("layer_types", "has " + std::to_string(names.size()) + " entries for " +
                                 std::to_string(cfg.num_hidden_layers) + " layers");
  for (const auto& name : names) {
    if (name == "full_attention") cfg.layer_types.push_back(AttentionKind::Full);
    else if (name == "sliding_attention") cfg.layer_types.push_back(AttentionKind::Sliding);
    else root.fail("layer_types", "unknown layer type '" + name + "' (known: full_attention, sliding_attention)");
  }
  if (cfg.has_sliding_layers() && !cfg.sliding_window)
    root.fail("layer_types", "names sliding_attention layers but no sliding_window is in effect");
  return true;
}

bool ModelConfig::is_nope(std::int64_t layer) const {
  return !nope_layers.empty() && nope_layers[static_cast<std::size_t>(layer)];
}

bool ModelConfig::is_sparse(std::int64_t layer) const {
  return moe.experts > 0 && moe.sparse_layers[static_cast<std::size_t>(layer)];
}

const RopeConfig& ModelConfig::rope_for(std::int64_t layer) const {
  static const RopeConfig kNoRope = [] {
    RopeConfig none;
    none.partial_rotary_factor = 0.0;
    return none;
  }();
  if (is_nope(layer)) return kNoRope;
  return sliding_rope && layer_types[static_cast<std::size_t>(layer)] == AttentionKind::Sliding ? *sliding_rope : rope;
}

bool ModelConfig::has_sliding_layers() const {
  return std::find(layer_types.begin(), layer_types.end(), AttentionKind::Sliding) != layer_types.end();
}

ModelConfig load_model_config(const std::filesystem::path& config_json) {
  const auto doc = read_json_file(config_json);
  const JsonObject root(doc, config_json.string());
  ModelConfig cfg;
  cfg.source = config_json.string();

  const auto archs = root.get_string_list("architectures");
  if (archs.empty()) root.fail("architectures", "is empty");
  cfg.architecture = archs.front();
  // A converted model names its own architecture; its decoder is the source family's.
  if (const auto lin = root.get_optional_object("linearize")) {
    const auto version = lin->get_int("format_version");
    if (version > kLinearizeFormatVersion)
      lin->fail("format_version", "is " + std::to_string(version) + ": written by a newer linearize (this one reads up to " +
                                      std::to_string(kLinearizeFormatVersion) + ")");
    const auto source = lin->get_optional_object("source");
    if (!source) lin->fail("source", "is missing");
    cfg.family = &find_architecture(source->get_string("architecture"), cfg.source);
    cfg.model_type = source->get_optional_string("model_type").value_or(cfg.family->model_type);
    cfg.linearize = lin->raw();
  } else {
    cfg.family = &find_architecture(cfg.architecture, cfg.source);
  }
  // Quantized weights (gpt-oss's MXFP4 experts, GPTQ, AWQ, ...) are blocks and scales, not the tensors a decoder reads.
  if (const auto quantization = root.get_optional_object("quantization_config"))
    root.fail("quantization_config", "quantized checkpoints ('" + quantization->get_optional_string("quant_method").value_or("unknown") +
                                         "') are not read: convert the bf16 or fp32 weights (e.g. gpt-oss dequantized by transformers' "
                                         "Mxfp4Config(dequantize=True) and saved)");
  if (cfg.linearize.is_null()) cfg.model_type = root.get_optional_string("model_type").value_or(cfg.family->model_type);
  const auto& family = cfg.family->defaults;

  cfg.vocab_size = positive(root, "vocab_size", root.get_int("vocab_size"));
  cfg.hidden_size = positive(root, "hidden_size", root.get_int("hidden_size"));
  cfg.intermediate_size = positive(root, "intermediate_size", root.get_int("intermediate_size"));
  cfg.num_hidden_layers = positive(root, "num_hidden_layers", root.get_int("num_hidden_layers"));
  cfg.num_attention_heads = positive(root, "num_attention_heads", root.get_int("num_attention_heads"));
  cfg.num_key_value_heads = positive(
      root, "num_key_value_heads",
      root.get_optional_int("num_key_value_heads").value_or(family.num_key_value_heads.value_or(cfg.num_attention_heads)));
  if (cfg.num_attention_heads % cfg.num_key_value_heads != 0)
    root.fail("num_key_value_heads", std::to_string(cfg.num_key_value_heads) + " does not divide num_attention_heads " +
                                         std::to_string(cfg.num_attention_heads));
  if (root.has("head_dim") || family.head_dim) {
    cfg.head_dim = positive(root, "head_dim", root.get_optional_int("head_dim").value_or(family.head_dim.value_or(0)));
  } else {
    if (cfg.hidden_size % cfg.num_attention_heads != 0)
      root.fail("num_attention_heads", std::to_string(cfg.num_attention_heads) + " does not divide hidden_size " +
                                           std::to_string(cfg.hidden_size) + " (and no head_dim is given)");
    cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;
  }
  cfg.max_position_embeddings =
      positive(root, "max_position_embeddings", root.get_optional_int("max_position_embeddings").value_or(family.max_position_embeddings));
  cfg.rms_norm_eps = root.get_optional_double("rms_norm_eps").value_or(family.rms_norm_eps);
  if (!(cfg.rms_norm_eps > 0.0)) root.fail("rms_norm_eps", "must be positive");
  cfg.hidden_act = root.get_optional_string("hidden_act").value_or("silu");
  // `rope_scaling` (legacy) wins over `rope_parameters`, as in transformers' convert_rope_params_to_dict.
  // transformers 5 writes one parameter object per layer type where they differ (Gemma 3).
  std::optional<JsonObject> rope_params = root.get_optional_object("rope_scaling");
  if (!rope_params) rope_params = root.get_optional_object("rope_parameters");
  if (rope_params && rope_params->raw().contains("full_attention")) {
    cfg.rope = parse_rope(root, rope_params->get_optional_object("full_attention"), cfg.max_position_embeddings, family.rope_theta);
    if (rope_params->raw().contains("sliding_attention"))
      cfg.sliding_rope = parse_rope(root, rope_params->get_optional_object("sliding_attention"), cfg.max_position_embeddings, family.rope_theta);
  } else {
    cfg.rope = parse_rope(root, rope_params, cfg.max_position_embeddings, family.rope_theta);
  }
  const auto rotary = static_cast<std::int64_t>(std::llround(cfg.head_dim * cfg.rope.partial_rotary_factor));
  if (rotary % 2 != 0) root.fail("head_dim", "rotary dimension " + std::to_string(rotary) + " is odd");
  for (const auto* rope : {&cfg.rope, cfg.sliding_rope ? &*cfg.sliding_rope : nullptr}) {
    if (!rope || rope->type != RopeType::LongRope) continue;
    const auto frequencies = static_cast<std::size_t>(kernels::rotary_dim(*rope, cfg.head_dim) / 2);
    const char* key = root.has("rope_scaling") ? "rope_scaling" : "rope_parameters";
    for (const auto* list : {&rope->short_factor, &rope->long_factor})
      if (list->size() != frequencies)
        root.fail(std::string(key) + (list == &rope->short_factor ? ".short_factor" : ".long_factor"),
                  "has " + std::to_string(list->size()) + " entries for " + std::to_string(frequencies) + " rotary frequencies");
  }
  cfg.tie_word_embeddings = root.get_bool("tie_word_embeddings", family.tie_word_embeddings);
  cfg.block = cfg.family->block;
  cfg.family->read_family_config(root, family, cfg);
  const std::string act_key = root.has("hidden_activation") ? "hidden_activation" : "hidden_act";
  if (cfg.hidden_act == "silu") cfg.block.activation = MlpActivation::Silu;
  else if (cfg.hidden_act == "gelu_pytorch_tanh") cfg.block.activation = MlpActivation::GeluTanh;
  else root.fail(act_key, "'" + cfg.hidden_act + "' is not supported (the gated MLP takes silu or gelu_pytorch_tanh)");
  cfg.dtype = root.get_optional_string("dtype").value_or(root.get_optional_string("torch_dtype").value_or(""));
  const auto bos = parse_token_ids(root, "bos_token_id");
  if (bos.size() > 1) root.fail("bos_token_id", "expected one id");
  if (!bos.empty()) cfg.bos_token_id = bos.front();
  cfg.eos_token_ids = parse_token_ids(root, "eos_token_id");
  return cfg;
}

}  // namespace linearize
