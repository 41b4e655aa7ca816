// Qwen2 / Qwen2.5: transformers' Qwen2Config. q/k/v always carry biases (o does not). The window exists only
// with `use_sliding_window`; then `layer_types` if given, else layers >= `max_window_layers` slide.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"

namespace linearize {

Architecture qwen2_architecture() {
  Architecture arch{"qwen2", {"Qwen2ForCausalLM"}, {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
                    ConfigDefaults{32, 32768, 4096, 28}, read_qwen_window_layers};
  arch.qkv_bias_always = true;
  return arch;
}

}  // namespace linearize
