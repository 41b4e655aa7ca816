// Qwen3-MoE: transformers' Qwen3MoeConfig. Qwen3's attention (q_norm / k_norm per head, optional biases) with routed
// MLPs: num_experts SwiGLU experts of moe_intermediate_size, softmax then top num_experts_per_tok, renormalised with
// norm_topk_prob; a layer is routed unless listed in mlp_only_layers, and only every decoder_sparse_step-th (then
// a dense MLP of intermediate_size). One window for every layer, only with use_sliding_window.
#include <algorithm>

#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_qwen3_moe_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  cfg.use_sliding_window = root.get_bool("use_sliding_window", false);
  const auto window = read_sliding_window(root, defaults);
  cfg.sliding_window = cfg.use_sliding_window ? window : std::nullopt;
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), cfg.sliding_window ? AttentionKind::Sliding : AttentionKind::Full);
  read_moe(root, 128, 8, "moe_intermediate_size", 768, cfg);
  cfg.moe.normalize_top_k = root.get_bool("norm_topk_prob", false);
  const auto step = root.get_optional_int("decoder_sparse_step").value_or(1);
  if (step <= 0) root.fail("decoder_sparse_step", "must be positive");
  const auto dense = root.has("mlp_only_layers") ? root.get_int_list("mlp_only_layers") : std::vector<std::int64_t>{};
  for (const auto layer : dense)
    if (layer < 0 || layer >= cfg.num_hidden_layers) root.fail("mlp_only_layers", "layer " + std::to_string(layer) + " does not exist");
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    cfg.moe.sparse_layers[static_cast<std::size_t>(i)] = std::find(dense.begin(), dense.end(), i) == dense.end() && (i + 1) % step == 0;
}

}  // namespace

Architecture qwen3_moe_architecture() {
  ConfigDefaults defaults{4, 32768, 4096, 0};
  Architecture arch{"qwen3_moe",
                    {"Qwen3MoeForCausalLM"},
                    {"attention_bias", "use_sliding_window", "sliding_window", "num_experts", "num_local_experts", "num_experts_per_tok",
                     "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers"},
                    defaults,
                    read_qwen3_moe_config};
  arch.block.qk_norm = QkNorm::PerHead;
  return arch;
}

}  // namespace linearize
