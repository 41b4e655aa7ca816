#include "converter/architectures/registry.h"

#include "formats/error.h"

namespace linearize {
namespace {

// Adding a family: one file defining <family>_architecture() and one line here.
std::vector<Architecture> register_all() {
  return {
      llama_architecture(),
      mistral_architecture(),
      qwen2_architecture(),
      qwen3_architecture(),
      gemma3_architecture(),
  };
}

}  // namespace

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> registered = register_all();
  return registered;
}

const Architecture& find_architecture(const std::string& hf_name, const std::string& file) {
  std::string known;
  for (const auto& arch : architectures()) {
    for (const auto& name : arch.hf_names) {
      if (name == hf_name) return arch;
      known += (known.empty() ? "" : ", ") + name;
    }
  }
  throw InputError(file, "architectures", "unknown architecture '" + hf_name + "' (supported: " + known + ")");
}

}  // namespace linearize
