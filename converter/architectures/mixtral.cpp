// Mixtral: transformers' MixtralConfig. Mistral's attention (one sliding window for every layer, when set) with a
// routed MLP on every layer: num_local_experts SwiGLU experts of intermediate_size (w1 gate, w3 up, w2 down under
// block_sparse_moe), softmax then the top num_experts_per_tok, always renormalised.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_mixtral_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.sliding_window = read_sliding_window(root, defaults);
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), cfg.sliding_window ? AttentionKind::Sliding : AttentionKind::Full);
  read_moe(root, 8, 2, nullptr, 0, cfg);
  cfg.moe.normalize_top_k = true;  // MixtralTopKRouter divides by the sum unconditionally
}

}  // namespace

Architecture mixtral_architecture() {
  ConfigDefaults defaults{8, 4096 * 32, std::nullopt, 0};
  defaults.rope_theta = 1e6;  // MixtralConfig.default_theta
  defaults.rms_norm_eps = 1e-5;
  Architecture arch{"mixtral", {"MixtralForCausalLM"}, {"sliding_window", "num_local_experts", "num_experts", "num_experts_per_tok"},
                    defaults, read_mixtral_config};
  arch.block.expert_names = names::ExpertNames::block_sparse_moe;
  return arch;
}

}  // namespace linearize
