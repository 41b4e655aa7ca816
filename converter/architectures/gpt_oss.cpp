// gpt-oss: transformers' GptOssConfig. Pre-norm blocks with T5-style RMSNorms (the product in fp32), q/k/v/o biases,
// a learned attention sink per query head (BlockSpec::attention_sinks), sliding (128) and full layers alternating
// from a sliding first one, YaRN RoPE (factor 32 over 4096 positions by default), and a routed MLP on every layer:
// num_local_experts experts of intermediate_size stacked in one tensor per projection (names::ExpertNames::stacked),
// with biases, a router with a bias, softmax over the top num_experts_per_tok logits, and the clamped SwiGLU
// (swiglu_alpha, swiglu_limit). MXFP4 checkpoints are refused with every other quantized one (model_config.cpp).
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_gpt_oss_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", true);
  read_interleaved_layers(root, defaults, 2, cfg);  // sliding first
  // GptOssConfig's RoPE when the file names none (its __post_init__): YaRN, factor 32 over 4096 positions, not truncated.
  if (!root.has("rope_scaling") && !root.has("rope_parameters")) {
    cfg.rope.type = RopeType::Yarn;
    cfg.rope.factor = 32.0;
    cfg.rope.beta_fast = 32.0;
    cfg.rope.beta_slow = 1.0;
    cfg.rope.truncate = false;
    cfg.rope.original_max_position_embeddings = 4096;
  }
  read_moe(root, 128, 4, nullptr, 0, cfg);
  cfg.moe.normalize_top_k = true;  // softmax over the top k logits: the renormalised top k of the softmax
  GatedActivation clamped(MlpActivation::ClampedSwiglu);
  clamped.alpha = root.get_optional_double("swiglu_alpha").value_or(clamped.alpha);
  clamped.limit = root.get_optional_double("swiglu_limit").value_or(clamped.limit);
  if (!(clamped.alpha > 0.0)) root.fail("swiglu_alpha", "must be positive");
  if (!(clamped.limit > 0.0)) root.fail("swiglu_limit", "must be positive");
  cfg.moe.expert_activation = clamped;
}

}  // namespace

Architecture gpt_oss_architecture() {
  ConfigDefaults defaults{8, 131072, 128, 0};
  defaults.head_dim = 64;
  defaults.rope_theta = 150000.0;  // GptOssConfig.default_theta
  defaults.rms_norm_eps = 1e-5;
  Architecture arch{"gpt_oss",
                    {"GptOssForCausalLM"},
                    {"attention_bias", "sliding_window", "layer_types", "num_local_experts", "num_experts", "num_experts_per_tok",
                     "swiglu_alpha", "swiglu_limit"},
                    defaults,
                    read_gpt_oss_config};
  arch.block.norm = NormStyle::WeightInFp32;
  arch.block.attention_sinks = true;
  arch.block.expert_names = names::ExpertNames::stacked;
  return arch;
}

}  // namespace linearize
