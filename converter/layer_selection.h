// Which layers a hybrid keeps as softmax attention (docs/recipes.md#layer-selection, `softmax_layers: auto:N`): each layer's
// sensitivity is what converting it alone costs, KL(source || model with only that layer converted) on real
// text, and the N most sensitive layers are kept. Training-free, so it ranks the recipe as converted, before
// any distillation (the choice LoLCATs and Liger make by hand, made by measurement).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/model/causal_lm.h"
#include "converter/model_config.h"

namespace linearize {

struct LayerSensitivity {
  std::int64_t layer = 0;
  double mean_kl = 0;  // KL(source || model) averaged over the prompts' positions, fp64
};

struct LayerSelectionOptions {
  std::filesystem::path source;
  std::string recipe;
  nlohmann::json params = nlohmann::json::object();  // the recipe's (softmax_layers is ignored)
  std::string params_origin = "command line";
  LoadOptions load;
  std::optional<std::filesystem::path> text;  // prompts from this file (text_file_prompts); else the built-in text
  // After each layer is measured.
  std::function<void(const LayerSensitivity& measured, std::int64_t layers)> progress;
};

// Every layer's sensitivity, most sensitive first (ties: lower layer first), on the built-in verify prompts
// (or options.text) tokenized by the source's tokenizer. One source model in memory; each layer's mixer is swapped in, run
// and swapped back.
std::vector<LayerSensitivity> rank_layers(const LayerSelectionOptions& options);

// The first `keep` layers of a ranking, ascending: a softmax_layers value.
std::vector<std::int64_t> most_sensitive(const std::vector<LayerSensitivity>& ranking, std::int64_t keep);

// N of a softmax_layers value "auto:N" (0 <= N <= layers) or "auto:P%" (P % of the layers, to the nearest,
// halves up), nullopt for any other JSON value (a list); an "auto:..." that is neither is
// InputError(file, "softmax_layers").
std::optional<std::int64_t> auto_softmax_layers(const nlohmann::json& value, const ModelConfig& config,
                                                const std::string& file);

}  // namespace linearize
