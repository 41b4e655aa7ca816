#include "converter/architectures/architecture.h"
#include "converter/model_config.h"

namespace linearize {

std::vector<TensorSpec> decoder_tensors(const Architecture& arch, const ModelConfig& cfg) {
  const std::int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
  const std::int64_t q_out = cfg.num_attention_heads * cfg.head_dim, kv_out = cfg.num_key_value_heads * cfg.head_dim;
  const bool qkv_bias = arch.qkv_bias_always || cfg.attention_bias;
  std::vector<TensorSpec> specs{{"model.embed_tokens.weight", {cfg.vocab_size, d}}};
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in, bool bias) {
      specs.push_back({p + name + ".weight", {out, in}});
      if (bias) specs.push_back({p + name + ".bias", {out}});
    };
    specs.push_back({p + "input_layernorm.weight", {d}});
    linear("self_attn.q_proj", q_out, d, qkv_bias);
    linear("self_attn.k_proj", kv_out, d, qkv_bias);
    linear("self_attn.v_proj", kv_out, d, qkv_bias);
    linear("self_attn.o_proj", d, q_out, cfg.attention_bias);
    if (cfg.block.qk_norm) {
      specs.push_back({p + "self_attn.q_norm.weight", {cfg.head_dim}});
      specs.push_back({p + "self_attn.k_norm.weight", {cfg.head_dim}});
    }
    specs.push_back({p + "post_attention_layernorm.weight", {d}});
    if (cfg.block.sandwich_norms) {
      specs.push_back({p + "pre_feedforward_layernorm.weight", {d}});
      specs.push_back({p + "post_feedforward_layernorm.weight", {d}});
    }
    linear("mlp.gate_proj", ff, d, cfg.mlp_bias);
    linear("mlp.up_proj", ff, d, cfg.mlp_bias);
    linear("mlp.down_proj", d, ff, cfg.mlp_bias);
  }
  specs.push_back({"model.norm.weight", {d}});
  // A tied model reuses the embeddings; some checkpoints still ship a copy, which is then ignored.
  specs.push_back({"lm_head.weight", {cfg.vocab_size, d}, cfg.tie_word_embeddings});
  return specs;
}

}  // namespace linearize
