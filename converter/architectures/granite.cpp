// Granite 3.x (dense): transformers' GraniteConfig (GraniteForCausalLM). Llama's block with four multipliers:
// embeddings times embedding_multiplier, attention scores times attention_multiplier (in place of head_dim^-1/2),
// each residual branch times residual_multiplier, logits divided by logits_scaling. Optional biases; no window.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_granite_config(const JsonObject& root, const ConfigDefaults&, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  cfg.mlp_bias = root.get_bool("mlp_bias", false);
  const auto multiplier = [&root](const char* key) {
    const double value = root.get_optional_double(key).value_or(1.0);  // GraniteConfig's default
    if (!(value > 0)) root.fail(key, "must be positive");
    return value;
  };
  cfg.block.embedding_scale = multiplier("embedding_multiplier");
  cfg.block.attention_scale = multiplier("attention_multiplier");
  cfg.block.residual_scale = multiplier("residual_multiplier");
  cfg.block.logits_divisor = multiplier("logits_scaling");
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), AttentionKind::Full);
}

}  // namespace

Architecture granite_architecture() {
  return {"granite",
          {"GraniteForCausalLM"},
          {"attention_bias", "mlp_bias", "embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling"},
          ConfigDefaults{std::nullopt, 2048, std::nullopt, 0},
          read_granite_config};
}

}  // namespace linearize
