// OLMo 2: transformers' Olmo2Config. Post-norm blocks (post_attention_layernorm on the mixer's output and
// post_feedforward_layernorm on the MLP's, before each residual add; no input norms), q_norm / k_norm over the whole
// q and k projections (all heads at once) before RoPE, RMSNorms whose product w x is taken in fp32 (Olmo2RMSNorm),
// optional attention biases, no window.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {

// OLMo 2's block, which OLMo 3 (olmo3.cpp) shares.
BlockSpec olmo2_block() {
  BlockSpec block;
  block.norm = NormStyle::WeightInFp32;
  block.norms = NormPlacement::Post;
  block.qk_norm = QkNorm::FullWidth;
  return block;
}

namespace {

void read_olmo2_config(const JsonObject& root, const ConfigDefaults&, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), AttentionKind::Full);
}

}  // namespace

Architecture olmo2_architecture() {
  ConfigDefaults defaults{std::nullopt, 2048, std::nullopt, 0};
  defaults.rms_norm_eps = 1e-5;
  Architecture arch{"olmo2", {"Olmo2ForCausalLM"}, {"attention_bias"}, defaults, read_olmo2_config};
  arch.block = olmo2_block();
  return arch;
}

}  // namespace linearize
