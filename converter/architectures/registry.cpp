#include "converter/architectures/registry.h"

#include "formats/error.h"

namespace linearize {

// Adding a family: one file in architectures/ defining `Architecture <family>_architecture()` (CMake
// compiles every file there) and one line here.
#define LINEARIZE_ARCHITECTURES(X) \
  X(llama)                         \
  X(mistral)                       \
  X(qwen2)                         \
  X(qwen3)                         \
  X(gemma3)                        \
  X(granite)                       \
  X(smollm3)                       \
  X(olmo2)                         \
  X(olmo3)                         \
  X(qwen3_moe)                     \
  X(mixtral)                       \
  X(olmoe)                         \
  X(phi3)                          \
  X(gpt_oss)

#define LINEARIZE_DECLARE_ARCHITECTURE(family) Architecture family##_architecture();
#define LINEARIZE_CALL_ARCHITECTURE(family) family##_architecture(),
LINEARIZE_ARCHITECTURES(LINEARIZE_DECLARE_ARCHITECTURE)

namespace {

std::vector<Architecture> register_all() { return {LINEARIZE_ARCHITECTURES(LINEARIZE_CALL_ARCHITECTURE)}; }

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
