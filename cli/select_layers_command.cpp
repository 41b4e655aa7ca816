#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "cli/recipe_settings.h"
#include "converter/layer_selection.h"
#include "converter/recipes/recipe.h"
#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize::cli {

void add_select_layers_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string recipe, json, text;
    std::int64_t keep = 0;
    std::vector<std::string> settings;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "select-layers", "Rank the layers by what converting each alone costs (KL to the source on real text) and name the N to keep as softmax");
  cmd->add_option("--model", opts->model.dir, "Source Hugging Face checkpoint directory")->required();
  cmd->add_option("--recipe", opts->recipe, "Recipe the ranking converts with")->required();
  cmd->add_option("--keep", opts->keep, "How many layers to keep as softmax attention")->required()->check(CLI::NonNegativeNumber);
  cmd->add_option("--set", opts->settings, "Recipe parameter key=value (repeatable)");
  cmd->add_option("--text", opts->text, "Text file to measure on (tokenized with the model's tokenizer; default: the built-in text)");
  cmd->add_option("--json", opts->json, "Also write the ranking as JSON");
  add_device_options(*cmd, opts->model);
  cmd->callback([opts] {
    LayerSelectionOptions select;
    select.source = opts->model.dir;
    select.recipe = opts->recipe;
    select.params = parse_settings(opts->settings);
    select.load = load_options(opts->model);
    if (!opts->text.empty()) select.text = std::filesystem::path(opts->text);
    select.progress = [](const LayerSensitivity& s, std::int64_t layers) {
      spdlog::info("layer {}/{} converted alone: mean KL {:.4g}", s.layer + 1, layers, s.mean_kl);
    };
    const auto layers = load_model_config(select.source / "config.json").num_hidden_layers;
    if (opts->keep > layers)
      throw InputError("command line", "--keep", std::to_string(opts->keep) + " is more than the model's " +
                                                     std::to_string(layers) + " layers");
    const auto ranking = rank_layers(select);
    const auto kept = most_sensitive(ranking, opts->keep);
    std::printf("%-5s %-6s %-14s %s\n", "rank", "layer", "mean KL", "kept");
    for (std::size_t i = 0; i < ranking.size(); ++i)
      std::printf("%-5zu %-6lld %-14.6g %s\n", i + 1, static_cast<long long>(ranking[i].layer), ranking[i].mean_kl,
                  static_cast<std::int64_t>(i) < opts->keep ? "softmax" : "");
    std::printf("softmax_layers=%s\n", nlohmann::json(kept).dump().c_str());
    if (!opts->json.empty()) {
      nlohmann::ordered_json doc{{"recipe", opts->recipe}, {"keep", opts->keep}, {"softmax_layers", kept},
                                 {"ranking", nlohmann::ordered_json::array()}};
      for (const auto& r : ranking) doc["ranking"].push_back({{"layer", r.layer}, {"mean_kl", r.mean_kl}});
      write_file_atomic(opts->json, doc.dump(1) + "\n");
    }
  });
}

}  // namespace linearize::cli
