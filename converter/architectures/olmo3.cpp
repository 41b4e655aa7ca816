// OLMo 3: transformers' Olmo3Config. OLMo 2's block (olmo2.cpp) with sliding-window layers: `layer_types`, by default
// every fourth layer full and the others sliding (window 4096). Each layer type has its own RoPE (rope_parameters
// full_attention / sliding_attention); the legacy rope_scaling scales the full layers only, the sliding ones keep
// default RoPE at rope_theta (Olmo3Config.convert_rope_params_to_dict).
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {

BlockSpec olmo2_block();

namespace {

void read_olmo3_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  read_interleaved_layers(root, defaults, 4, cfg);
  if (cfg.sliding_rope) return;  // one object per layer type, read already
  const auto params = root.get_optional_object("rope_parameters");
  if (!root.has("rope_scaling") && params && !params->has("full_attention"))
    root.fail("rope_parameters", "OLMo 3 reads one object per layer type (full_attention, sliding_attention); Olmo3Config ignores a single one");
  RopeConfig sliding;
  sliding.theta = cfg.rope.theta;
  sliding.partial_rotary_factor = cfg.rope.partial_rotary_factor;
  cfg.sliding_rope = sliding;
}

}  // namespace

Architecture olmo3_architecture() {
  ConfigDefaults defaults{std::nullopt, 2048, 4096, 0};
  defaults.rms_norm_eps = 1e-5;
  defaults.rope_theta = 5e5;  // Olmo3Config.default_theta
  Architecture arch{"olmo3", {"Olmo3ForCausalLM"}, {"attention_bias", "sliding_window", "layer_types"}, defaults,
                    read_olmo3_config};
  arch.block = olmo2_block();
  return arch;
}

}  // namespace linearize
