#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>

#include "cli/byte_progress.h"
#include "cli/commands.h"
#include "cli/recipe_settings.h"
#include "cli/verify_output.h"
#include "converter/linearized.h"
#include "converter/verify.h"
#include "formats/error.h"

namespace linearize::cli {

void add_convert_command(CLI::App& app) {
  struct Options {
    std::string model, recipe, out;
    std::vector<std::string> settings;
    bool force = false;
    std::uint64_t max_shard_size = kDefaultMaxShardBytes;
    VerifyFlags verify;
  };
  auto opts = std::make_shared<Options>();
  std::string recipes;
  for (const auto& r : registered_recipes()) recipes += (recipes.empty() ? "" : ", ") + r.name;
  auto* cmd = app.add_subcommand("convert", "Convert a softmax-attention checkpoint with a recipe, write it, and verify it");
  cmd->add_option("--model", opts->model, "Source Hugging Face checkpoint directory")->required();
  cmd->add_option("--recipe", opts->recipe, "Recipe: " + recipes)->required();
  cmd->add_option("--out", opts->out, "Output directory")->required();
  cmd->add_option("--set", opts->settings, "Recipe parameter key=value (repeatable), e.g. --set window=32 --set softmax_layers=[0] (or auto:N: the N layers select-layers ranks highest; auto:P%: P % of the layers)");
  cmd->add_flag("--force", opts->force, "Overwrite an existing output directory");
  cmd->add_option("--max-shard-size", opts->max_shard_size,
                  "Above this the weights are written as Hugging Face shards with an index (e.g. 5GB, 500MB; default 5GB)")
      ->transform(CLI::AsSizeValue(true));  // kb = 1000 b, as Hugging Face reads "5GB"
  add_verify_flags(*cmd, opts->verify);
  cmd->callback([opts] {
    ConvertOptions convert;
    convert.source = opts->model;
    convert.out = opts->out;
    convert.recipe = opts->recipe;
    convert.params = parse_settings(opts->settings);
    convert.force = opts->force;
    convert.max_shard_bytes = opts->max_shard_size;
    const auto started = std::chrono::steady_clock::now();
    convert.progress = byte_progress();
    const auto result = convert_checkpoint(convert);
    spdlog::info("wrote {} ({} layers converted, {} new parameters) in {:.2f} s", opts->out, result.converted_layers,
                 result.new_parameters, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());

    // The export records the logits its verify prompts give (L2 of every later verify), then is verified.
    VerifyOptions verify;
    verify.progress = log_verify_stage;
    apply_verify_flags(opts->verify, opts->out, verify);
    report_verification(record_and_verify(opts->out, opts->model, verify), opts->out, std::nullopt);
  });
}

}  // namespace linearize::cli
