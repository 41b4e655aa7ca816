// config.json of a Hugging Face decoder (a family of the architecture registry) as a typed ModelConfig.
//
// `architectures[0]` picks the family; missing keys take the defaults of its transformers configuration
// class (what the file *means* when a key is absent); the size keys have no sensible default and are required.
// RoPE is read from the legacy `rope_theta` + `rope_scaling` (with `type` or `rope_type`) and from the
// transformers-v5 `rope_parameters`, following transformers' `convert_rope_params_to_dict`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/architectures/architecture.h"
#include "kernels/rope.h"

namespace linearize {

enum class AttentionKind { Full, Sliding };

// A routed mixture of SwiGLU experts in place of the dense MLP on some layers (Mixtral, Qwen3-MoE, OLMoE, gpt-oss; Shazeer
// et al. 2017 eqs. 1-3): p = softmax(router x + b) over the experts in fp32 (b: gpt-oss's router bias), the top_k of p
// (renormalised to sum 1 where the family says), y = sum over the chosen e of p_e expert_e(x). gpt-oss's softmax over
// the top k logits is the renormalised top k of p (softmax is monotonic and the renormalisation cancels its
// denominator). The tensors' names are the family's (BlockSpec::expert_names).
struct MoeConfig {
  std::int64_t experts = 0;            // 0: every layer's MLP dense
  std::int64_t top_k = 0;
  std::int64_t intermediate_size = 0;  // each expert's
  bool normalize_top_k = false;
  std::optional<GatedActivation> expert_activation;  // gpt-oss's clamped SwiGLU; nullopt: the dense MLP's (hidden_act)
  std::vector<bool> sparse_layers;     // per layer: routed, else the dense MLP of ModelConfig::intermediate_size
};

struct ModelConfig {
  std::string source;  // the config.json path, for error messages downstream
  const Architecture* family = nullptr;  // the registry entry architectures[0] resolved to
  std::string architecture;  // architectures[0]
  nlohmann::json linearize;  // the `linearize` object of a converted model's config.json; null otherwise
  std::string model_type;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  std::string hidden_act = "silu";
  RopeConfig rope;                      // of every layer, or of the full-attention layers when...
  std::optional<RopeConfig> sliding_rope;  // ...the sliding layers have their own (Gemma 3's local base)
  BlockSpec block;                       // the family's block, refined by its reader
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Llama's key; Qwen2's hard-coded q/k/v bias is family->qkv_bias_always
  bool mlp_bias = false;
  std::optional<std::int64_t> sliding_window;  // effective window (null when unused)
  bool use_sliding_window = false;             // Qwen2's switch, as written
  std::optional<std::int64_t> max_window_layers;
  std::vector<AttentionKind> layer_types;      // resolved: one entry per layer
  std::vector<bool> nope_layers;               // true where a layer's attention has no RoPE (SmolLM3); empty: none
  MoeConfig moe;
  std::string dtype;                           // `dtype` or `torch_dtype`, e.g. "bfloat16"; empty if absent
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;

  std::int64_t kv_groups() const { return num_attention_heads / num_key_value_heads; }
  // The layer's RoPE; on a NoPE layer, RoPE over 0 channels (partial_rotary_factor 0): the identity.
  const RopeConfig& rope_for(std::int64_t layer) const;
  bool is_nope(std::int64_t layer) const;
  bool is_sparse(std::int64_t layer) const;  // a routed MoE MLP
  GatedActivation expert_activation() const { return moe.expert_activation.value_or(GatedActivation(block.activation)); }
  bool has_sliding_layers() const;
};

// The format of the `linearize` object this build writes; a config from a newer one is refused.
inline constexpr int kLinearizeFormatVersion = 1;

ModelConfig load_model_config(const std::filesystem::path& config_json);

// Shared by the family readers: `sliding_window` (explicit null = no window, absent = the family default),
// and an explicit `layer_types` list (returns false when the file has none).
std::optional<std::int64_t> read_sliding_window(const JsonObject& root, const ConfigDefaults& defaults);
// Qwen2's and Qwen3's rule: a window only with `use_sliding_window`; then `layer_types` if given, else the
// layers from `max_window_layers` on slide.
void read_qwen_window_layers(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg);
bool read_layer_types(const JsonObject& root, ModelConfig& cfg);
// Gemma 3's, OLMo 3's and gpt-oss's rule: `sliding_window`, then `layer_types` if given, else every `full_every`-th
// layer (counting from 1) full and the others sliding, while a window is in effect.
void read_interleaved_layers(const JsonObject& root, const ConfigDefaults& defaults, std::int64_t full_every, ModelConfig& cfg);
// Shared by the MoE families: the expert count (num_experts or num_local_experts, aliases in every MoE config class),
// num_experts_per_tok, each expert's width (`width_key`, or the dense intermediate_size when null), checked; every
// layer routed. The family sets the rest of cfg.moe.
void read_moe(const JsonObject& root, std::int64_t default_experts, std::int64_t default_top_k, const char* width_key,
              std::int64_t default_width, ModelConfig& cfg);

}  // namespace linearize
