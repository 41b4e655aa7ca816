// What one decoder family is: the `architectures[0]` names it answers to, the config keys it reads beyond
// the common decoder ones (with its own defaults), its sliding-window rule, its block (as data, refined
// from config.json by its reader) and the tensors it expects. One file per family (llama.cpp, mistral.cpp,
// qwen2.cpp, qwen3.cpp, gemma3.cpp) defines one of these; registry.cpp lists them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
};

// RMSNorm's weight: y = w * x / rms(x) (Llama), or y = (1 + w) * x / rms(x) with the product taken in fp32
// (Gemma's zero-centred weights).
enum class NormStyle { Weight, OnePlusWeight };
enum class MlpActivation { Silu, GeluTanh };  // the gate's activation: silu, gelu_pytorch_tanh

// A decoder block beyond the layout every family shares (norm -> mixer -> residual -> norm -> gated MLP ->
// residual, as llama.cpp's per-architecture graphs spell out per family).
struct BlockSpec {
  NormStyle norm = NormStyle::Weight;
  // Gemma's sandwich: post_attention_layernorm normalises the mixer's output before the residual add,
  // pre_feedforward_layernorm the MLP's input and post_feedforward_layernorm its output. Without it,
  // post_attention_layernorm is the MLP's input norm (Llama).
  bool sandwich_norms = false;
  bool qk_norm = false;  // q_norm / k_norm: RMSNorm over head_dim on each head of q and k before RoPE
  MlpActivation activation = MlpActivation::Silu;
  double embedding_scale = 1.0;                // embeddings times this (Gemma: sqrt(hidden_size))
  std::optional<double> final_logit_softcap;   // logits = c tanh(logits / c)
  std::optional<double> attention_scale;       // scores q.k times this; default head_dim^-1/2
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

// The tensors of the decoder (embeddings, per-layer q/k/v/o + gated MLP + two norms, and q/k norms and the
// sandwich's two extra norms where the block has them, final norm, lm_head) with shapes and biases from
// the resolved config.
std::vector<TensorSpec> decoder_tensors(const Architecture& arch, const ModelConfig& cfg);

}  // namespace linearize
