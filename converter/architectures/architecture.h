// What one decoder family is: the `architectures[0]` names it answers to, the config keys it reads beyond
// the common decoder ones (with its own defaults), its sliding-window rule and the tensors it expects.
// One file per family (llama.cpp, mistral.cpp, qwen2.cpp) defines one of these; registry.cpp lists them.
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
  // Reads the family keys; resolves cfg.sliding_window and cfg.layer_types (one per layer) by its own rule.
  void (*read_family_config)(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg);
  bool qkv_bias_always = false;             // Qwen2 hard-codes q/k/v biases whatever the config says
};

// The tensors of a Llama-style decoder (embeddings, per-layer q/k/v/o + SwiGLU + two norms, final norm,
// lm_head) with shapes and biases from the resolved config; all three families share this layout.
std::vector<TensorSpec> decoder_tensors(const Architecture& arch, const ModelConfig& cfg);

}  // namespace linearize
