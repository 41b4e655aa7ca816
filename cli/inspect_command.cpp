#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "converter/inspect.h"

namespace linearize::cli {

void add_inspect_command(CLI::App& app) {
  struct Options {
    std::string dir;
    bool as_json = false;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("inspect", "Show what a checkpoint directory holds (architecture, sizes, RoPE, windows, shards)");
  cmd->add_option("dir", opts->dir, "Hugging Face checkpoint directory")->required();
  cmd->add_flag("--json", opts->as_json, "Print machine-readable JSON");
  cmd->callback([opts] {
    const auto report = inspect_checkpoint(opts->dir);
    std::cout << (opts->as_json ? report.dump(2) + "\n" : format_inspection(report));
  });
}

}  // namespace linearize::cli
