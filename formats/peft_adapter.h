// PEFT LoRA adapter directories (peft:src/peft/tuners/lora/config.py, utils/save_and_load.py):
// `adapter_config.json` + `adapter_model.safetensors` whose tensors are named
// `base_model.model.<module path>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r] (the adapter name
// "default" is stripped on save). Only plain LoRA: no DoRA, fan_in_fan_out, or per-layer rank/alpha patterns.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace linearize {

inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";

struct PeftLoraConfig {
  std::int64_t r = 0;
  double lora_alpha = 0.0;
  double lora_dropout = 0.0;
  bool use_rslora = false;                  // scale alpha / sqrt(r) instead of alpha / r
  std::vector<std::string> target_modules;  // module name suffixes ("q_proj", ...)
  std::string base_model_name_or_path;
};

struct PeftLoraModule {
  std::string path;  // the HF module path, e.g. "model.layers.0.self_attn.q_proj"
  at::Tensor a;      // lora_A [r, in]
  at::Tensor b;      // lora_B [out, r]
};

struct PeftAdapter {
  PeftLoraConfig config;
  std::vector<PeftLoraModule> modules;  // sorted by path when read
};

// The factors' names in a checkpoint: <module path>.lora_A.weight and .lora_B.weight (PEFT's file
// prefixes them with base_model.model.).
std::string peft_lora_a_name(const std::string& module_path);
std::string peft_lora_b_name(const std::string& module_path);

// Writes the weights (fp32) and then the config, each atomically, so a directory with a config is complete.
// Creates `dir` if needed. Throws std::invalid_argument for shapes that disagree with config.r.
void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapter& adapter);

// Reads an adapter written by us or by PEFT; throws InputError naming the file and the field or tensor.
// The tensors are views of the mapped file (read-only).
PeftAdapter read_peft_adapter(const std::filesystem::path& dir);

}  // namespace linearize
