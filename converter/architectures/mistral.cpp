// Mistral: transformers' MistralConfig. One sliding window for every layer (`layer_types` is ignored),
// `sliding_window: null` (v0.2+ checkpoints) means full attention. No biases.
#include "converter/architectures/registry.h"
#include "converter/model_config.h"
#include "formats/json_file.h"

namespace linearize {
namespace {

void read_mistral_config(const JsonObject& root, const ConfigDefaults& defaults, ModelConfig& cfg) {
  cfg.sliding_window = read_sliding_window(root, defaults);
  cfg.layer_types.assign(static_cast<std::size_t>(cfg.num_hidden_layers),
                         cfg.sliding_window ? AttentionKind::Sliding : AttentionKind::Full);
}

}  // namespace

Architecture mistral_architecture() {
  return {"mistral", {"MistralForCausalLM"}, {"sliding_window"}, ConfigDefaults{8, 4096 * 32, 4096, 0},
          read_mistral_config};
}

}  // namespace linearize
