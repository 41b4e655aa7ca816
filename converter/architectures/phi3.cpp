// Phi-3 / Phi-4-mini: transformers' Phi3Config (Phi3ForCausalLM). Llama's block with q, k, v stored as one
// qkv_proj [q; k; v] and gate, up as one gate_up_proj [gate; up]; a partial rotary factor (Phi-4-mini: 0.75);
// one sliding window for every layer when set (Phi-3-mini: 2047). No biases. LongRoPE (`longrope`) is read by
// the common RoPE reader (kernels/rope.h), with Phi3Config's top-level original_max_position_embeddings.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_phi3_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.sliding_window = read_sliding_window(root, defaults);
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), cfg.sliding_window ? AttentionKind::Sliding : AttentionKind::Full);
}

}  // namespace

Architecture phi3_architecture() {
  ConfigDefaults defaults{std::nullopt, 4096, std::nullopt, 0};
  defaults.rms_norm_eps = 1e-5;
  Architecture arch{"phi3", {"Phi3ForCausalLM"}, {"sliding_window", "partial_rotary_factor"}, defaults, read_phi3_config};
  arch.block.fused_projections = true;
  return arch;
}

}  // namespace linearize
