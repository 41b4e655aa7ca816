// Gemma 3 text models: transformers' Gemma3TextConfig (Gemma3ForCausalLM). The block is a sandwich:
// (1+w) RMSNorms before and after the mixer and before and after the MLP, q_norm / k_norm on every head, a
// gelu-tanh gated MLP, embeddings scaled by sqrt(hidden_size), attention scores scaled by
// query_pre_attn_scalar^-1/2, sliding and full layers interleaved (layer_types, else every sixth layer
// full) with their own RoPE bases (rope_local_base_freq or rope_parameters.sliding_attention for the
// sliding ones), and an optional final logit soft-cap.
#include <cmath>

#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_gemma3_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.hidden_act = root.get_optional_string("hidden_activation").value_or("gelu_pytorch_tanh");
  cfg.attention_bias = root.get_bool("attention_bias", false);
  if (root.get_bool("use_bidirectional_attention", false))
    root.fail("use_bidirectional_attention", "bidirectional attention is not a causal decoder");
  if (root.has("attn_logit_softcapping"))
    root.fail("attn_logit_softcapping", "attention logit soft-capping is not supported (Gemma 3 does not use it)");
  const double query_scalar = root.get_optional_double("query_pre_attn_scalar").value_or(256.0);
  if (!(query_scalar > 0)) root.fail("query_pre_attn_scalar", "must be positive");
  cfg.block.attention_scale = 1.0 / std::sqrt(query_scalar);
  cfg.block.embedding_scale = std::sqrt(static_cast<double>(cfg.hidden_size));
  cfg.block.embedding_scale_in_weight_dtype = true;  // Gemma3TextScaledWordEmbedding's buffer
  if (root.has("final_logit_softcapping")) {
    cfg.block.final_logit_softcap = root.get_double("final_logit_softcapping");
    if (!(*cfg.block.final_logit_softcap > 0)) root.fail("final_logit_softcapping", "must be positive or null");
  }
  const auto pattern = root.get_optional_int("sliding_window_pattern").value_or(6);
  if (pattern <= 0) root.fail("sliding_window_pattern", "must be positive");
  read_interleaved_layers(root, defaults, pattern, cfg);
  // The sliding layers' base is their own parameters' rope_theta, else rope_local_base_freq, else 1e4, never the
  // top-level rope_theta (Gemma3TextConfig.convert_rope_params_to_dict). The legacy form has one rope_theta (and
  // rope_scaling) for the full layers and the sliding ones unscaled.
  const double local_theta = root.get_optional_double("rope_local_base_freq").value_or(10000.0);
  if (!(local_theta > 0)) root.fail("rope_local_base_freq", "must be positive");
  if (!cfg.sliding_rope) {
    RopeConfig local;
    local.theta = local_theta;
    local.partial_rotary_factor = cfg.rope.partial_rotary_factor;
    cfg.sliding_rope = local;
  } else {
    auto params = root.get_optional_object("rope_scaling");
    if (!params) params = root.get_optional_object("rope_parameters");
    const auto sliding = params->get_optional_object("sliding_attention");
    if (!sliding || !sliding->has("rope_theta")) cfg.sliding_rope->theta = local_theta;
  }
}

}  // namespace

Architecture gemma3_architecture() {
  ConfigDefaults defaults{4, 131072, 4096, 0};
  defaults.head_dim = 256;
  defaults.tie_word_embeddings = true;
  defaults.rope_theta = 1e6;  // Gemma3TextConfig.default_theta["global"]: the full layers' base
  Architecture arch{"gemma3_text",
                    {"Gemma3ForCausalLM"},
                    {"hidden_activation", "query_pre_attn_scalar", "sliding_window", "layer_types", "sliding_window_pattern",
                     "rope_local_base_freq", "final_logit_softcapping", "attention_bias"},
                    defaults,
                    read_gemma3_config};
  arch.block.norm = NormStyle::OnePlusWeight;
  arch.block.norms = NormPlacement::Sandwich;
  arch.block.qk_norm = QkNorm::PerHead;
  return arch;
}

}  // namespace linearize
