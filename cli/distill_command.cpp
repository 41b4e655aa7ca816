#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "cli/verify_output.h"
#include "distill/run.h"

namespace linearize::cli {

void add_distill_command(CLI::App& app) {
  struct Options {
    std::string config;
    std::vector<std::string> settings;
    bool resume = false, dump_config = false;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("distill", "Train a converted model: attention transfer (stage 1) and LoRA (stage 2), then export and verify it");
  cmd->add_option("--config", opts->config, "YAML run file (configs/*.yaml)")->required();
  cmd->add_option("--set", opts->settings, "Override a key, key.path=value in YAML syntax (repeatable), e.g. --set stage1.steps=50");
  cmd->add_flag("--resume", opts->resume, "Continue from the newest complete checkpoint");
  cmd->add_flag("--dump-config", opts->dump_config, "Print the effective config and exit");
  cmd->callback([opts] {
    DistillOptions run;
    run.config = RunConfig::load(opts->config, opts->settings);
    if (opts->dump_config) {
      std::cout << run.config.dump();
      return;
    }
    run.resume = opts->resume;
    DistillResult result;
    try {
      result = run_distill(run);
    } catch (const TrainingDiverged& e) {
      throw CheckFailed(std::string("training diverged: ") + e.what());
    }
    if (result.stopped) {
      // The same overrides again: the checkpoint continues this run's config, not the file's alone.
      std::string command = "linearize distill --config " + opts->config;
      for (const auto& setting : opts->settings) command += " --set '" + setting + "'";
      std::cout << "stopped at step " << result.step << "; checkpoint " << result.checkpoint.string()
                << "; resume with: " << command << " --resume\n";
      return;
    }
    if (result.after) {
      // A resumed run has no training-free row (it was measured before the interruption).
      std::printf("held-out text        perplexity   KL(teacher||student)\n");
      std::printf("teacher              %10.4f   %10.6f\n", result.after->teacher_perplexity, 0.0);
      const bool stage2 = run.config.stage2.enabled;
      const std::vector<std::pair<const char*, const std::optional<QualityFigures>*>> rows{
          {"training-free", &result.before},
          {"after stage 1", stage2 ? &result.after_stage1 : &result.after},
          {"after stage 2", stage2 ? &result.after : nullptr}};
      for (const auto& [label, figures] : rows)
        if (figures && figures->has_value())
          std::printf("%-20s %10.4f   %10.6f\n", label, (*figures)->student_perplexity, (*figures)->kl);
      std::fflush(stdout);
    }
    if (!result.verify) {  // a rank other than 0 of a multi-process job: rank 0 exports and verifies
      std::cout << "trained to step " << result.step << "; rank 0 exports\n";
      return;
    }
    report_verification(*result.verify, result.export_dir, std::nullopt);
  });
}

}  // namespace linearize::cli
