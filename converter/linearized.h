// Converted models: writing one from a source checkpoint and a recipe (the directory of docs/formats.md#export-directory),
// and loading any model directory, source or converted, into the one decoder.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "converter/model/causal_lm.h"
#include "converter/recipes/recipe.h"
#include "formats/checkpoint.h"

namespace linearize {

// A Hugging Face checkpoint or a linearize export: a converted model's layers get their recipe's mixers
// (softmax_layers keep the source attention); an export's LoRA adapter (<dir>/adapter, PEFT) is attached.
CausalLM load_model(const std::filesystem::path& dir, const LoadOptions& options = {});

// A converted layer's mixer built again from the model's own weights, adapters and recipe tensors, cast to
// `dtype`: verify's per-layer L1 runs it in fp64 (one layer at a time, never a second copy of the model).
// Null for layers kept as softmax and for models that are not conversions.
std::unique_ptr<TokenMixer> rebuild_mixer(const CausalLM& model, std::int64_t layer, at::ScalarType dtype);

// A converted model's recipe and its resolved parameters (config.json's linearize.recipe and .params).
struct RecipeOfModel {
  const Recipe* recipe;
  RecipeParams params;
};
RecipeOfModel recipe_of(const ModelConfig& config);

// The layers a conversion replaced with its recipe's mixer (none for a plain checkpoint).
std::vector<std::int64_t> converted_layers(const ModelConfig& config);

// Every tensor a model directory must hold: the decoder's, plus its recipe's new ones when converted.
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);

struct ConvertOptions {
  std::filesystem::path source, out;
  std::string recipe;
  // Given recipe parameters (from --set / YAML); softmax_layers "auto:N" keeps the N layers rank_layers
  // ranks highest (converter/layer_selection.h), recorded as linearize.layer_selection.
  nlohmann::json params = nlohmann::json::object();
  std::string params_origin = "command line";           // names them in errors
  bool force = false;
  std::uint64_t max_shard_bytes = kDefaultMaxShardBytes;  // above it model.safetensors is written as shards
  // After each tensor is written: bytes of tensor data written so far, of `total` (an 8B model streams
  // 16 GB: minutes on a slow disk).
  std::function<void(std::uint64_t written, std::uint64_t total)> progress;
};

struct ConvertResult {
  RecipeParams params;  // resolved
  std::int64_t converted_layers = 0;
  std::int64_t new_parameters = 0;
};

// Writes the converted directory: model.safetensors or its shards (every source tensor copied byte for
// byte in its dtype, then the recipe's new tensors in fp32), tokenizer files, and config.json last (the directory counts as complete
// only then). Refuses an existing output without `force`.
ConvertResult convert_checkpoint(const ConvertOptions& options);

// model.safetensors metadata key of the {tensor: sha256} map of the tensors copied from the source.
inline constexpr const char* kCopiedTensorsMetadataKey = "linearize_copied_sha256";

// config.json's `linearize` key of the {file: sha256} map of the transformers files an export ships
// (converter/hf_files.h), which verify's L0 checks.
inline constexpr const char* kHfFilesKey = "hf_files";
// config.json's `model_type` of an export: transformers finds LinearizeConfig by it (auto_map); the source's
// is kept as linearize.source.model_type.
inline constexpr const char* kExportModelType = "linearize";

// The files of a Hugging Face directory copied into a conversion unchanged when present.
const std::vector<std::string>& passthrough_files();
// Copies those present in `from` into `to`.
void copy_passthrough_files(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace linearize
