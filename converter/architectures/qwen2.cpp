// Qwen2 / Qwen2.5: transformers' Qwen2Config. q/k/v always carry biases (o does not). The window exists only
// with `use_sliding_window`; then `layer_types` if given, else layers >= `max_window_layers` slide.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_qwen2_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  const auto window = read_sliding_window(root, defaults);
  cfg.use_sliding_window = root.get_bool("use_sliding_window", false);
  cfg.max_window_layers = root.get_optional_int("max_window_layers").value_or(defaults.max_window_layers);
  cfg.sliding_window = cfg.use_sliding_window ? window : std::nullopt;
  if (read_layer_types(root, cfg)) return;
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    cfg.layer_types.push_back(cfg.sliding_window && i >= *cfg.max_window_layers ? AttentionKind::Sliding
                                                                                : AttentionKind::Full);
}

}  // namespace

Architecture qwen2_architecture() {
  Architecture arch{"qwen2", {"Qwen2ForCausalLM"}, {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
                    ConfigDefaults{32, 32768, 4096, 28}, read_qwen2_config};
  arch.qkv_bias_always = true;
  return arch;
}

}  // namespace linearize
