#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>

#include "cli/byte_progress.h"
#include "cli/commands.h"
#include "converter/native_export.h"

namespace linearize::cli {

void add_export_native_command(CLI::App& app) {
  auto opts = std::make_shared<NativeExportOptions>();
  auto* cmd = app.add_subcommand("export-native",
                                 "Write a conversion as a plain checkpoint of an architecture serving runtimes implement (vLLM, "
                                 "llama.cpp, transformers without remote code)");
  cmd->add_option("--model", opts->model, "The conversion's directory")->required();
  cmd->add_option("--layout", opts->layout,
                  "qwen3_5 (Qwen3_5ForCausalLM: gated-deltanet conversions) or granitehybrid (GraniteMoeHybridForCausalLM: mamba2)")
      ->required()
      ->check(CLI::IsMember(native_layouts()));
  cmd->add_option("--out", opts->out, "Output directory")->required();
  cmd->add_flag("--force", opts->force, "Overwrite --out");
  cmd->add_flag("--allow-inexact", opts->allow_inexact,
                "Write what the layout cannot hold exactly anyway (listed in config.json's linearize.inexact) instead of refusing");
  cmd->callback([opts] {
    opts->progress = byte_progress();
    const auto started = std::chrono::steady_clock::now();
    const auto result = export_native(*opts);
    for (const auto& x : result.inexact) spdlog::warn("inexact: {}", x.line());
    spdlog::info("wrote {} as {} ({} linear-attention and {} attention layers, {:.1f} MB) in {:.2f} s", opts->out.string(),
                 opts->layout, result.linear_layers, result.attention_layers, result.bytes / 1e6,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    if (result.state_growth > 1)
      spdlog::info("the layout's recurrent state is {}x the conversion's (kv heads repeated, or inert heads added)", result.state_growth);
  });
}

}  // namespace linearize::cli
