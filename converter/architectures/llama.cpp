// Llama (1/2/3.x): transformers' LlamaConfig. Optional biases on attention and MLP; no sliding window.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_llama_config(const JsonObject& root, const ConfigDefaults&, ModelConfig& cfg) {
  cfg.attention_bias = root.get_bool("attention_bias", false);
  cfg.mlp_bias = root.get_bool("mlp_bias", false);
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers), AttentionKind::Full);
}

}  // namespace

Architecture llama_architecture() {
  return {"llama", {"LlamaForCausalLM", "LLaMAForCausalLM"}, {"attention_bias", "mlp_bias"},
          ConfigDefaults{std::nullopt, 2048, std::nullopt, 0}, read_llama_config};
}

}  // namespace linearize
