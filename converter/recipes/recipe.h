// A linearization recipe: its parameters, the tensors it adds to each converted layer, and how it builds
// that layer's token mixer from the source attention (docs/architecture.md#recipes). One file per recipe defines one
// Recipe; registry.cpp lists them (one line each).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "converter/model/softmax_attention_mixer.h"
#include "converter/model_config.h"

namespace linearize {

// What a parameter is to the tools around the recipe: verify cuts its prompts at a window's edges.
enum class RecipeParamRole { none, window };

// One parameter: its default fixes its JSON type (a null default means "derived", e.g. from head_dim).
struct RecipeParam {
  std::string name;
  nlohmann::json default_value;
  std::string help;
  bool positive = false;  // a number that must be > 0 (validated with the others)
  bool below_one = false;  // a number that must be < 1 (with positive: a fraction in (0, 1))
  RecipeParamRole role = RecipeParamRole::none;
  // Optional: the value a null default takes, from the source (gated-deltanet's norm_eps is its rms_norm_eps);
  // a value given must have that value's type.
  std::function<nlohmann::json(const ModelConfig&)> derive{};
};

// Every declared parameter with its value, validated (resolve_recipe_params).
using RecipeParams = nlohmann::json;

// A tensor a converted layer adds, stored as model.layers.{i}.self_attn.<name>.
struct NewTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::function<at::Tensor()> init;  // fp32 initial value (conversion), not called when loading
};

class OnnxLayer;  // converter/onnx_graph.h

struct LayerContext {
  const ModelConfig& config;
  std::int64_t layer;
  const RecipeParams& params;
  // The source checkpoint's tensor by name, undefined when absent (set by convert only: a recipe that moves a
  // source tensor into one of its own, mamba2's biases into its conv bias, reads it here).
  std::function<at::Tensor(const std::string&)> source_tensor{};
};

using LayerTensors = std::map<std::string, at::Tensor>;  // new tensors by NewTensor::name

struct Recipe {
  std::string name;                  // "liger-gla"
  std::string summary;
  std::vector<RecipeParam> params;   // besides softmax_layers, which every recipe takes
  std::function<std::vector<NewTensor>(const LayerContext&)> new_tensors;
  std::function<std::unique_ptr<TokenMixer>(const LayerContext&, const SoftmaxAttentionMixer& source,
                                            const LayerTensors& tensors)>
      make_mixer;
  // Optional: throws InputError naming the config field when the recipe cannot convert this source (checked
  // before anything is written).
  std::function<void(const ModelConfig&)> check_source;
  // Optional: the mixer in an ONNX graph (export-onnx): x [B, S, hidden] (normed) -> [B, S, hidden], with its
  // state read from and written to the layer's past/present inputs and outputs. Without it, export-onnx
  // refuses the model naming the layer and the mixer.
  std::function<std::string(OnnxLayer& layer, const std::string& x)> emit_onnx;
  // Optional: the mixer as a recorded program (converter/recipes/program_recorder.h) for a model of this
  // config: config.json's linearize.program, which verify's L0 checks and the export's modeling file runs.
  std::function<nlohmann::json(const ModelConfig& config, const RecipeParams& params)> describe;
};

// The registered recipes, and one by name (InputError(file, field) listing the known ones).
// A deque: registering more never moves the recipes already handed out.
const std::deque<Recipe>& registered_recipes();
// Adds a recipe defined outside registry.cpp (a plug-in, or a test's recipe); the name must be new.
void register_recipe(Recipe recipe);
const Recipe& find_recipe(const std::string& name, const std::string& file, const std::string& field);

// Fills defaults and validates `given` (from --set or YAML) against the recipe: an unknown key names the
// nearest known one; a value of the wrong type or out of range names the key. `file` names the source
// in errors ("command line", a YAML path, a config.json).
RecipeParams resolve_recipe_params(const Recipe& recipe, const nlohmann::json& given, const ModelConfig& config,
                                   const std::string& file);

// The layers a recipe leaves as exact source attention.
std::vector<std::int64_t> softmax_layers(const RecipeParams& params);

// "liger-gla" -> "LinearizeLigerGlaForCausalLM"
std::string linearized_architecture_name(const std::string& recipe);

}  // namespace linearize
