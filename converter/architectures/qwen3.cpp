// Qwen3 (dense): transformers' Qwen3Config. Qwen2's window rule; q_norm / k_norm, an RMSNorm over head_dim
// on every head of q and k before RoPE; head_dim given apart from hidden/heads (default 128); optional
// biases on all four attention projections (attention_bias), none by default.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_qwen3_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  read_qwen_window_layers(root, defaults, cfg);
}

}  // namespace

Architecture qwen3_architecture() {
  ConfigDefaults defaults{32, 32768, 4096, 28};
  defaults.head_dim = 128;
  Architecture arch{"qwen3", {"Qwen3ForCausalLM"},
                    {"attention_bias", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
                    defaults, read_qwen3_config};
  arch.block.qk_norm = QkNorm::PerHead;
  return arch;
}

}  // namespace linearize
