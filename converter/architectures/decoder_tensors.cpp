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
    vector(LayerModule::input_layernorm, d);
    linear(LayerModule::q_proj, q_out, d, qkv_bias);
    linear(LayerModule::k_proj, kv_out, d, qkv_bias);
    linear(LayerModule::v_proj, kv_out, d, qkv_bias);
    linear(LayerModule::o_proj, d, q_out, cfg.attention_bias);
    if (cfg.block.qk_norm) {
      vector(LayerModule::q_norm, cfg.head_dim);
      vector(LayerModule::k_norm, cfg.head_dim);
    }
    vector(LayerModule::post_attention_layernorm, d);
    if (cfg.block.sandwich_norms) {
      vector(LayerModule::pre_feedforward_layernorm, d);
      vector(LayerModule::post_feedforward_layernorm, d);
    }
    linear(LayerModule::gate_proj, ff, d, cfg.mlp_bias);
    linear(LayerModule::up_proj, ff, d, cfg.mlp_bias);
    linear(LayerModule::down_proj, d, ff, cfg.mlp_bias);
  }
  specs.push_back({names::kFinalNorm, {d}});
  // A tied model reuses the embeddings; some checkpoints still ship a copy, which is then ignored.
  specs.push_back({names::kLmHead, {cfg.vocab_size, d}, cfg.tie_word_embeddings});
  return specs;
}

}  // namespace linearize
