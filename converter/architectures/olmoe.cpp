// OLMoE: transformers' OlmoeConfig. A pre-norm Llama block with OLMo's q/k RMSNorms over the whole projection and a
// routed MLP on every layer: num_experts SwiGLU experts of intermediate_size, softmax then the top
// num_experts_per_tok, renormalised only with norm_topk_prob (off by default). clip_qkv is refused.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_olmoe_config(const JsonObject& root, const ConfigDefaults&, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  if (root.has("clip_qkv")) root.fail("clip_qkv", "clamping q, k and v is not supported (OLMoE-1B-7B does not clamp)");
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), AttentionKind::Full);
  read_moe(root, 64, 8, nullptr, 0, cfg);
  cfg.moe.normalize_top_k = root.get_bool("norm_topk_prob", false);
}

}  // namespace

Architecture olmoe_architecture() {
  ConfigDefaults defaults{std::nullopt, 4096, std::nullopt, 0};
  defaults.rms_norm_eps = 1e-5;
  Architecture arch{"olmoe", {"OlmoeForCausalLM"}, {"attention_bias", "clip_qkv", "num_experts", "num_local_experts", "num_experts_per_tok", "norm_topk_prob"},
                    defaults, read_olmoe_config};
  arch.block.qk_norm = QkNorm::FullWidth;
  return arch;
}

}  // namespace linearize
