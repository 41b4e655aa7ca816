#include "converter/architectures/architecture.h"
#include "converter/model_config.h"
#include "converter/names.h"

namespace linearize {

std::vector<TensorSpec> decoder_tensors(const Architecture& arch, const ModelConfig& cfg) {
  const std::int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  const std::int64_t q_out = cfg.num_attention_heads * cfg.head_dim, kv_out = cfg.num_key_value_heads * cfg.head_dim;
  const bool qkv_bias = arch.qkv_bias_always || cfg.attention_bias;
  using names::LayerModule;
  std::vector<TensorSpec> specs{{names::kEmbedTokens, {cfg.vocab_size, d}}};
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto vector = [&](LayerModule m, std::int64_t size) { specs.push_back({names::weight(i, m), {size}}); };
    auto linear = [&](LayerModule m, std::int64_t out, std::int64_t in, bool bias) {
      specs.push_back({names::weight(i, m), {out, in}});
      if (bias) specs.push_back({names::bias(i, m), {out}});
    };
    const auto placement = cfg.block.norms;
    if (placement != NormPlacement::Post) vector(LayerModule::input_layernorm, d);
    const bool fused = cfg.block.fused_projections;
    if (fused) {
      linear(LayerModule::qkv_proj, q_out + 2 * kv_out, d, qkv_bias);
    } else {
      linear(LayerModule::q_proj, q_out, d, qkv_bias);
      linear(LayerModule::k_proj, kv_out, d, qkv_bias);
      linear(LayerModule::v_proj, kv_out, d, qkv_bias);
    }
    linear(LayerModule::o_proj, d, q_out, cfg.attention_bias);
    if (cfg.block.attention_sinks) specs.push_back({names::attention_sinks(i), {cfg.num_attention_heads}});
    if (cfg.block.qk_norm != QkNorm::None) {
      const bool full = cfg.block.qk_norm == QkNorm::FullWidth;
      vector(LayerModule::q_norm, full ? q_out : cfg.head_dim);
      vector(LayerModule::k_norm, full ? kv_out : cfg.head_dim);
    }
    vector(LayerModule::post_attention_layernorm, d);
    if (placement == NormPlacement::Sandwich) vector(LayerModule::pre_feedforward_layernorm, d);
    if (placement != NormPlacement::Pre) vector(LayerModule::post_feedforward_layernorm, d);
    if (cfg.is_sparse(i)) {
      const auto naming = cfg.block.expert_names;
      const std::int64_t width = cfg.moe.intermediate_size;
      using names::ExpertProjection;
      specs.push_back({names::router_weight(i, naming), {cfg.moe.experts, d}});
      if (names::has_router_bias(naming)) specs.push_back({names::router_bias(i, naming), {cfg.moe.experts}});
      if (naming == names::ExpertNames::stacked) {
        using names::StackedExperts;
        const std::int64_t experts = cfg.moe.experts;
        specs.push_back({names::stacked_experts(i, StackedExperts::gate_up_proj), {experts, d, 2 * width}});
        specs.push_back({names::stacked_experts(i, StackedExperts::gate_up_proj_bias), {experts, 2 * width}});
        specs.push_back({names::stacked_experts(i, StackedExperts::down_proj), {experts, width, d}});
        specs.push_back({names::stacked_experts(i, StackedExperts::down_proj_bias), {experts, d}});
        continue;
      }
      for (std::int64_t e = 0; e < cfg.moe.experts; ++e) {
        specs.push_back({names::expert_weight(i, e, ExpertProjection::gate, naming), {width, d}});
        specs.push_back({names::expert_weight(i, e, ExpertProjection::up, naming), {width, d}});
        specs.push_back({names::expert_weight(i, e, ExpertProjection::down, naming), {d, width}});
      }
      continue;
    }
    if (fused) {
      linear(LayerModule::gate_up_proj, 2 * ff, d, cfg.mlp_bias);
    } else {
      linear(LayerModule::gate_proj, ff, d, cfg.mlp_bias);
      linear(LayerModule::up_proj, ff, d, cfg.mlp_bias);
    }
    linear(LayerModule::down_proj, d, ff, cfg.mlp_bias);
  }
  specs.push_back({names::kFinalNorm, {d}});
  // A tied model reuses the embeddings; some checkpoints still ship a copy, which is then ignored.
  specs.push_back({names::kLmHead, {cfg.vocab_size, d}, cfg.tie_word_embeddings});
  return specs;
}

}  // namespace linearize
