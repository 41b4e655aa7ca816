#include "formats/peft_adapter.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/safetensors.h"

namespace linearize {
namespace {

using nlohmann::json;

const std::string kPrefix = "base_model.model.";
const std::string kSuffixA = ".lora_A.weight";
const std::string kSuffixB = ".lora_B.weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT writes lora_alpha as the int the user gave; keep integral values integers.
json number(double value) {
  if (std::nearbyint(value) == value && std::fabs(value) < 1e15) return static_cast<std::int64_t>(value);
  return value;
}

}  // namespace

std::string peft_lora_a_name(const std::string& module_path) { return module_path + kSuffixA; }
std::string peft_lora_b_name(const std::string& module_path) { return module_path + kSuffixB; }

void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapter& adapter) {
  const auto& config = adapter.config;
  NamedTensors tensors;
  for (const auto& module : adapter.modules) {
    const auto& a = module.a;
    const auto& b = module.b;
    if (a.dim() != 2 || b.dim() != 2 || a.size(0) != config.r || b.size(1) != config.r) {
      throw std::invalid_argument("write_peft_adapter: " + module.path + ": lora_A must be [r, in] and lora_B [out, r] with r = " +
                                  std::to_string(config.r));
    }
    tensors.emplace_back(kPrefix + peft_lora_a_name(module.path), a.detach().to(at::kFloat));
    tensors.emplace_back(kPrefix + peft_lora_b_name(module.path), b.detach().to(at::kFloat));
  }
  // The keys PEFT's LoraConfig saves for plain LoRA (peft:src/peft/tuners/lora/config.py).
  const json config_json = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", config.base_model_name_or_path},
      {"revision", nullptr},
      {"r", config.r},
      {"lora_alpha", number(config.lora_alpha)},
      {"lora_dropout", config.lora_dropout},
      {"target_modules", config.target_modules},
      {"use_rslora", config.use_rslora},
      {"use_dora", false},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"init_lora_weights", true},
      {"inference_mode", true},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
  };
  std::filesystem::create_directories(dir);
  write_safetensors(dir / kPeftWeightsFile, tensors, {{"format", "pt"}});
  write_file_atomic(dir / kPeftConfigFile, config_json.dump(2) + "\n");  // last: the directory is complete
}

PeftAdapter read_peft_adapter(const std::filesystem::path& dir) {
  const auto config_path = (dir / kPeftConfigFile).string();
  const json config_json = read_json_file(config_path);
  const JsonObject obj(config_json, config_path);
  PeftAdapter adapter;
  auto& config = adapter.config;
  if (const auto type = obj.get_string("peft_type"); type != "LORA") obj.fail("peft_type", "'" + type + "' is not supported (only LORA)");
  config.r = obj.get_int("r");
  if (config.r < 1) obj.fail("r", "must be >= 1");
  config.lora_alpha = obj.get_double("lora_alpha");
  config.lora_dropout = obj.has("lora_dropout") ? obj.get_double("lora_dropout") : 0.0;
  config.use_rslora = obj.get_bool("use_rslora", false);
  if (obj.get_bool("use_dora", false)) obj.fail("use_dora", "DoRA adapters are not supported");
  if (obj.get_bool("fan_in_fan_out", false)) obj.fail("fan_in_fan_out", "transposed (Conv1D) weights are not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (obj.has(key) && !obj.raw().at(key).empty()) obj.fail(key, "per-layer rank/alpha patterns are not supported");
  }
  if (const auto bias = obj.get_optional_string("bias"); bias && *bias != "none") obj.fail("bias", "only \"none\" is supported");
  // PEFT accepts a list of name suffixes or one regex string.
  if (obj.has("target_modules")) {
    config.target_modules = obj.raw().at("target_modules").is_string() ? std::vector<std::string>{obj.get_string("target_modules")}
                                                                        : obj.get_string_list("target_modules");
  }
  config.base_model_name_or_path = obj.get_optional_string("base_model_name_or_path").value_or("");

  const auto weights_path = dir / kPeftWeightsFile;
  if (!std::filesystem::exists(weights_path)) throw InputError(weights_path.string(), "file", "missing (older .bin adapters are not supported)");
  const auto file = SafetensorsFile::open(weights_path);
  std::map<std::string, PeftLoraModule> modules;
  for (const auto& name : file.names()) {
    const bool is_a = ends_with(name, kSuffixA), is_b = ends_with(name, kSuffixB);
    if (name.compare(0, kPrefix.size(), kPrefix) != 0 || (!is_a && !is_b)) {
      throw InputError(file.path(), name, "not a LoRA tensor (expected " + kPrefix + "<module>" + kSuffixA + " or " + kSuffixB + ")");
    }
    const std::string path = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffixA.size());
    const at::Tensor t = file.tensor(name);
    const bool shape_ok = t.dim() == 2 && t.size(is_a ? 0 : 1) == config.r;
    if (!shape_ok) throw InputError(file.path(), name, std::string("expected shape ") + (is_a ? "[r, in]" : "[out, r]") + " with r = " + std::to_string(config.r));
    auto& module = modules[path];
    module.path = path;
    (is_a ? module.a : module.b) = t;
  }
  for (auto& [path, module] : modules) {
    if (!module.a.defined() || !module.b.defined()) {
      throw InputError(file.path(), kPrefix + path + (module.a.defined() ? kSuffixB : kSuffixA), "missing (LoRA tensors come in A/B pairs)");
    }
    adapter.modules.push_back(std::move(module));
  }
  return adapter;
}

}  // namespace linearize
