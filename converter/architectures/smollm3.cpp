// SmolLM3: transformers' SmolLM3Config. Llama's block with layers whose attention has no RoPE: `no_rope_layers[i]` is
// 1 where layer i rotates and 0 where it does not (NoPE), by default every no_rope_layer_interval-th layer (the 4th,
// 8th, ...) is NoPE. A window only with use_sliding_window (then `layer_types`, by default the NoPE layers slide).
// Tied embeddings by default.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_smollm3_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  cfg.mlp_bias = root.get_bool("mlp_bias", false);
  const auto layers = static_cast<std::size_t>(cfg.num_hidden_layers);
  if (root.has("no_rope_layers")) {
    const auto uses_rope = root.get_int_list("no_rope_layers");
    if (uses_rope.size() != layers)
      root.fail("no_rope_layers", "has " + std::to_string(uses_rope.size()) + " entries for " + std::to_string(layers) + " layers");
    for (const auto flag : uses_rope) {
      if (flag != 0 && flag != 1) root.fail("no_rope_layers", "entries are 1 (RoPE) or 0 (no RoPE)");
      cfg.nope_layers.push_back(flag == 0);
    }
  } else {
    const auto interval = root.get_optional_int("no_rope_layer_interval").value_or(4);
    if (interval <= 0) root.fail("no_rope_layer_interval", "must be positive");
    for (std::size_t i = 0; i < layers; ++i) cfg.nope_layers.push_back((static_cast<std::int64_t>(i) + 1) % interval == 0);
  }
  // SmolLM3Attention slides only when use_sliding_window is set and its layer type says so.
  cfg.use_sliding_window = root.get_bool("use_sliding_window", false);
  const auto window = read_sliding_window(root, defaults);
  cfg.sliding_window = cfg.use_sliding_window ? window : std::nullopt;
  if (cfg.sliding_window && read_layer_types(root, cfg)) return;
  cfg.layer_types.clear();
  for (std::size_t i = 0; i < layers; ++i)
    cfg.layer_types.push_back(cfg.sliding_window && cfg.nope_layers[i] ? AttentionKind::Sliding : AttentionKind::Full);
}

}  // namespace

Architecture smollm3_architecture() {
  ConfigDefaults defaults{std::nullopt, 32768, std::nullopt, 0};
  defaults.num_key_value_heads = 4;
  defaults.tie_word_embeddings = true;
  defaults.rope_theta = 2e6;  // SmolLM3Config.default_theta
  return {"smollm3",
          {"SmolLM3ForCausalLM"},
          {"attention_bias", "mlp_bias", "no_rope_layers", "no_rope_layer_interval", "use_sliding_window", "sliding_window", "layer_types"},
          defaults,
          read_smollm3_config};
}

}  // namespace linearize
