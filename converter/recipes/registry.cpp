#include <algorithm>
#include <cctype>
#include <deque>
#include <stdexcept>

#include "converter/recipes/recipe.h"
#include "formats/error.h"
#include "formats/nearest_name.h"

namespace linearize {

// Adding a recipe: one file in recipes/ defining `Recipe <name>_recipe()` (CMake compiles every file there)
// and one line here.
#define LINEARIZE_RECIPES(X) \
  X(liger_gla)               \
  X(lolcats)                 \
  X(hedgehog)                \
  X(supra)                   \
  X(gated_deltanet)          \
  X(mamba2)                  \
  X(transnormer)

#define LINEARIZE_DECLARE_RECIPE(name) Recipe name##_recipe();
#define LINEARIZE_CALL_RECIPE(name) name##_recipe(),
LINEARIZE_RECIPES(LINEARIZE_DECLARE_RECIPE)

namespace {

std::vector<Recipe> register_all() { return {LINEARIZE_RECIPES(LINEARIZE_CALL_RECIPE)}; }

const RecipeParam kSoftmaxLayers{"softmax_layers", nlohmann::json::array(),
                                 "layers kept as exact source softmax attention (inter-layer hybrid); or \"auto:N\" / \"auto:P%\": the N "
                                 "(P %) layers select-layers ranks highest"};

bool same_type(const nlohmann::json& value, const nlohmann::json& default_value) {
  if (default_value.is_null()) return value.is_null() || value.is_number_integer();  // derived sizes
  if (default_value.is_number_float()) return value.is_number();
  if (default_value.is_number_integer()) return value.is_number_integer();  // signed or unsigned in JSON
  if (default_value.is_array()) return value.is_array();
  return value.type() == default_value.type();
}

std::deque<Recipe>& registry() {
  static std::deque<Recipe> registered = [] {
    const auto all = register_all();
    return std::deque<Recipe>(all.begin(), all.end());
  }();
  return registered;
}

}  // namespace

const std::deque<Recipe>& registered_recipes() { return registry(); }

void register_recipe(Recipe recipe) {
  for (const auto& r : registry())
    if (r.name == recipe.name) throw std::invalid_argument("register_recipe: '" + recipe.name + "' is registered already");
  registry().push_back(std::move(recipe));
}

const Recipe& find_recipe(const std::string& name, const std::string& file, const std::string& field) {
  std::vector<std::string> known;
  for (const auto& recipe : registered_recipes()) {
    if (recipe.name == name) return recipe;
    known.push_back(recipe.name);
  }
  std::string list;
  for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
  throw InputError(file, field, "unknown recipe '" + name + "' (did you mean '" + nearest_name(name, known) +
                                    "'? known: " + list + ")");
}

RecipeParams resolve_recipe_params(const Recipe& recipe, const nlohmann::json& given, const ModelConfig& config,
                                   const std::string& file) {
  std::vector<RecipeParam> declared{kSoftmaxLayers};
  declared.insert(declared.end(), recipe.params.begin(), recipe.params.end());
  std::vector<std::string> names;
  for (const auto& p : declared) names.push_back(p.name);

  RecipeParams resolved = nlohmann::json::object();
  for (const auto& p : declared) resolved[p.name] = p.default_value;
  if (!given.is_null() && !given.is_object()) throw InputError(file, "recipe parameters", "expected a mapping of key: value");
  for (const auto& [key, value] : given.items()) {
    const auto it = std::find(names.begin(), names.end(), key);
    if (it == names.end())
      throw InputError(file, key, "unknown parameter of recipe " + recipe.name + " (did you mean '" +
                                      nearest_name(key, names) + "'?)");
    const auto& decl = declared[static_cast<std::size_t>(it - names.begin())];
    const auto like = decl.derive ? decl.derive(config) : decl.default_value;
    if (!same_type(value, like)) throw InputError(file, key, "expected a value like " + like.dump() + ", got " + value.dump());
    resolved[key] = value;
  }
  // softmax_layers: distinct layer indices of this model.
  std::vector<std::int64_t> layers;
  for (const auto& v : resolved["softmax_layers"]) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= config.num_hidden_layers)
      throw InputError(file, "softmax_layers", v.dump() + " is not a layer of this model (0.." +
                                                  std::to_string(config.num_hidden_layers - 1) + ")");
    layers.push_back(v.get<std::int64_t>());
  }
  std::sort(layers.begin(), layers.end());
  if (std::adjacent_find(layers.begin(), layers.end()) != layers.end())
    throw InputError(file, "softmax_layers", "lists a layer twice");
  resolved["softmax_layers"] = layers;
  for (const auto& p : declared)
    if (p.derive && resolved[p.name].is_null()) resolved[p.name] = p.derive(config);
  for (const auto& p : declared)
    if (p.positive && resolved[p.name].is_number() && resolved[p.name].get<double>() <= 0)
      throw InputError(file, p.name, "must be positive, got " + resolved[p.name].dump());
    else if (p.below_one && resolved[p.name].is_number() && resolved[p.name].get<double>() >= 1)
      throw InputError(file, p.name, "must be below 1, got " + resolved[p.name].dump());
  return resolved;
}

std::vector<std::int64_t> softmax_layers(const RecipeParams& params) {
  return params.at("softmax_layers").get<std::vector<std::int64_t>>();
}

std::string linearized_architecture_name(const std::string& recipe) {
  std::string camel;
  bool upper = true;
  for (const char c : recipe) {
    if (c == '-' || c == '_') {
      upper = true;
      continue;
    }
    camel += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return "Linearize" + camel + "ForCausalLM";
}

}  // namespace linearize
