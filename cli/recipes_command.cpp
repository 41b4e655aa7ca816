// `linearize recipes`: the recipe registry as a user (or a script: --json) reads it, each recipe with its summary
// and parameters. Tools that loop over recipes (scripts/bench.sh quality) read this instead of a list of their own.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "converter/recipes/recipe.h"

namespace linearize::cli {
namespace {

const char* role_name(RecipeParamRole role) { return role == RecipeParamRole::window ? "window" : "none"; }

nlohmann::json recipes_json() {
  auto recipes = nlohmann::json::array();
  for (const auto& recipe : registered_recipes()) {
    auto params = nlohmann::json::array();
    for (const auto& p : recipe.params)
      params.push_back({{"name", p.name}, {"default", p.default_value}, {"help", p.help}, {"role", role_name(p.role)}});
    recipes.push_back({{"name", recipe.name}, {"summary", recipe.summary}, {"params", params}});
  }
  return recipes;
}

}  // namespace

void add_recipes_command(CLI::App& app) {
  auto json = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("recipes", "List the recipes with their parameters (every one also takes softmax_layers)");
  cmd->add_flag("--json", *json, "Print the list as JSON");
  cmd->callback([json] {
    const auto recipes = recipes_json();
    if (*json) {
      std::printf("%s\n", recipes.dump(2).c_str());
      return;
    }
    for (const auto& r : recipes) {
      std::printf("%s: %s\n", r["name"].get<std::string>().c_str(), r["summary"].get<std::string>().c_str());
      for (const auto& p : r["params"])
        std::printf("  %-18s %-10s %s\n", p["name"].get<std::string>().c_str(), p["default"].dump().c_str(), p["help"].get<std::string>().c_str());
    }
  });
}

}  // namespace linearize::cli
