// What one decoder family is: the `architectures[0]` names it answers to, the config keys it reads beyond
// the common decoder ones (with its own defaults), its sliding-window rule, its block (as data, refined
// from config.json by its reader) and the tensors it expects. One file per family in this folder defines one of
// these; registry.cpp lists them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "converter/names.h"

namespace linearize {

class JsonObject;
struct ModelConfig;

// Defaults of the family's transformers configuration class for keys a config.json may omit.
struct ConfigDefaults {
  std::optional<std::int64_t> num_key_value_heads;  // nullopt: same as num_attention_heads
  std::int64_t max_position_embeddings = 2048;
  std::optional<std::int64_t> sliding_window;
  std::int64_t max_window_layers = 0;
  std::optional<std::int64_t> head_dim = std::nullopt;  // nullopt: hidden_size / num_attention_heads
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;  // where config.json gives none (its config class's default_theta)
  double rms_norm_eps = 1e-6;
};

// RMSNorm's weight: y = w * x / rms(x) rounded to x's dtype before w multiplies it (Llama), w * x / rms(x) with the
// product taken in fp32 (OLMo 2's T5-style norm), or (1 + w) * x / rms(x) with the product in fp32 (Gemma's
// zero-centred weights). The three differ only in 16-bit models.
enum class NormStyle { Weight, WeightInFp32, OnePlusWeight };
// A gated MLP's activation: act(gate) * up with silu or gelu_pytorch_tanh (Shazeer 2020, eqs. 5-6), or gpt-oss's
// clamped SwiGLU (its experts): g = min(gate, limit), u = clamp(up, -limit, limit), g sigmoid(alpha g) (u + 1).
enum class MlpActivation { Silu, GeluTanh, ClampedSwiglu };
struct GatedActivation {
  MlpActivation kind = MlpActivation::Silu;
  double alpha = 1.702, limit = 7.0;  // ClampedSwiglu's (GptOssConfig's swiglu_alpha, swiglu_limit)
  GatedActivation(MlpActivation k = MlpActivation::Silu) : kind(k) {}  // NOLINT: every other activation is its kind alone
};

// Where the block's RMSNorms sit (llama.cpp's per-architecture graphs spell them out per family):
//   Pre       h = x + mixer(input(x));                 out = h + mlp(post_attention(h))               (Llama)
//   Sandwich  h = x + post_attention(mixer(input(x))); out = h + post_ff(mlp(pre_ff(h)))               (Gemma)
//   Post      h = x + post_attention(mixer(x));        out = h + post_ff(mlp(h))                       (OLMo 2)
enum class NormPlacement { Pre, Sandwich, Post };

// q_norm / k_norm, an RMSNorm on q and k before RoPE: none, over head_dim on each head (Qwen3, Gemma 3), or over the
// whole projection width, all heads at once (OLMo 2).
enum class QkNorm { None, PerHead, FullWidth };

// A decoder block beyond the layout every family shares (norm -> mixer -> residual -> norm -> gated MLP ->
// residual). Every scale defaults to the identity.
struct BlockSpec {
  NormStyle norm = NormStyle::Weight;
  NormPlacement norms = NormPlacement::Pre;
  QkNorm qk_norm = QkNorm::None;
  MlpActivation activation = MlpActivation::Silu;
  double embedding_scale = 1.0;                // embeddings times this (Gemma: sqrt(hidden_size), Granite: embedding_multiplier)
  bool embedding_scale_in_weight_dtype = false;  // Gemma: the scale is a buffer rounded to the weights' dtype first
  double residual_scale = 1.0;                 // x + r * branch, for the mixer's and the MLP's (Granite: residual_multiplier)
  double logits_divisor = 1.0;                 // logits / s (Granite: logits_scaling)
  std::optional<double> final_logit_softcap;   // logits = c tanh(logits / c)
  std::optional<double> attention_scale;       // scores q.k times this; default head_dim^-1/2
  names::ExpertNames expert_names = names::ExpertNames::mlp_experts;  // a MoE family's tensor names
  bool fused_projections = false;  // Phi-3: q, k, v stored as one qkv_proj, gate and up as one gate_up_proj
  // gpt-oss: a learned logit s_h per query head joins every softmax's denominator (a key no query can match, whose
  // value is 0): p_ij = exp(s_ij) / (exp(s_h) + sum_j' exp(s_ij')). Only the source's softmax layers have it.
  bool attention_sinks = false;
};

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
  bool optional = false;  // e.g. lm_head.weight of a tied model
};

struct Architecture {
  std::string model_type;                   // "llama"
  std::vector<std::string> hf_names;        // architectures[0] values, the first is canonical
  std::vector<std::string> config_keys;     // family keys read_family_config reads (inspect reports them)
  ConfigDefaults defaults;
  // Reads the family keys; resolves cfg.sliding_window and cfg.layer_types (one per layer) by its own rule,
  // and refines cfg.block (activation, scales, soft-cap) from the config.
  void (*read_family_config)(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg);
  bool qkv_bias_always = false;             // Qwen2 hard-codes q/k/v biases whatever the config says
  BlockSpec block{};                        // the family's block before its reader refines it
};

// The tensors of the decoder (embeddings, per-layer q/k/v/o + gated MLP + the norms its placement has, q/k norms
// where the block has them, final norm, lm_head) with shapes and biases from
// the resolved config.
std::vector<TensorSpec> decoder_tensors(const Architecture& arch, const ModelConfig& cfg);

}  // namespace linearize
