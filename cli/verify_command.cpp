#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/id_list.h"
#include "cli/verify_output.h"
#include "converter/model_config.h"
#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize::cli {

void log_verify_stage(const std::string& stage, double seconds) { spdlog::info("verify: {} done in {:.1f} s", stage, seconds); }

void report_verification(const VerifyReport& report, const std::filesystem::path& model_dir,
                         const std::optional<std::filesystem::path>& json_out,
                         const std::optional<std::filesystem::path>& junit_out) {
  std::cout << report.table();
  const auto json = report.to_json().dump(2) + "\n";
  // An export keeps its last report beside its weights (docs/formats.md#verify-records); other directories are not ours
  // to write into, so they get the report only where --json says.
  if (!load_model_config(model_dir / "config.json").linearize.is_null()) write_file_atomic(model_dir / kVerifyReportFile, json);
  if (json_out) write_file_atomic(*json_out, json);
  if (junit_out) write_file_atomic(*junit_out, report.junit("linearize verify " + model_dir.string()));
  if (!report.passed()) throw CheckFailed("verification failed: see the FAIL rows above");
}

void add_verify_flags(CLI::App& cmd, VerifyFlags& flags) {
  auto* text_option = cmd.add_option("--text", flags.text_file, "Text file for the L1/L4 prompts (tokenized with the model's tokenizer)");
  auto* ids_option = cmd.add_option("--prompt-ids", flags.prompt_ids, "Comma-separated token ids for the L1/L4 prompt");
  text_option->excludes(ids_option);
  cmd.add_option("--generate-tokens", flags.thresholds.generate_tokens, "Tokens per greedy continuation compared with the source (0: none)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{4096}));
  add_device_options(cmd, flags.device);
  add_stream_option(cmd, flags.device);
}

void apply_verify_flags(const VerifyFlags& flags, const std::filesystem::path& model_dir, VerifyOptions& options) {
  options.thresholds = flags.thresholds;
  options.load = load_options(flags.device, model_dir);
  if (!flags.prompt_ids.empty()) {
    options.prompts.ids.push_back(parse_id_list(flags.prompt_ids, "--prompt-ids"));
    options.prompts.origin = "--prompt-ids";
  }
  if (!flags.text_file.empty()) options.prompts = text_file_prompts(model_dir, flags.text_file);
}

void add_verify_command(CLI::App& app) {
  struct Options {
    std::string model, source, json, junit;
    VerifyFlags flags;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("verify", "Check a model directory (L0-L4 of the verification contract, and L6 where it holds model.onnx); exit 1 if a check fails");
  cmd->add_option("--model", opts->model, "Model directory (a conversion, or any checkpoint)")->required();
  cmd->add_option("--source", opts->source, "The source checkpoint: enables byte comparison, L3 and L4");
  add_verify_flags(*cmd, opts->flags);
  auto& thresholds = opts->flags.thresholds;
  cmd->add_option("--max-kl", thresholds.max_kl, "Fail when the mean KL(source || model) exceeds this");
  cmd->add_option("--min-top1", thresholds.min_top1, "Fail when top-1 agreement with the source is below this");
  cmd->add_option("--min-gen-agree", thresholds.min_gen_agree,
                  "Fail when greedy continuations agree with the source's on less than this mean fraction of tokens before their first divergence")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--layer-budget", thresholds.layer_budget, "Per-layer hidden-state relative error budget (L4 names the first layer over it)");
  cmd->add_option("--json", opts->json, "Also write the report as JSON here");
  cmd->add_option("--junit", opts->junit, "Also write the report as JUnit XML here (one test case per check)");
  cmd->callback([opts] {
    VerifyOptions verify;
    verify.progress = log_verify_stage;
    verify.model = opts->model;
    if (!opts->source.empty()) verify.source = std::filesystem::path(opts->source);
    apply_verify_flags(opts->flags, opts->model, verify);
    const auto optional_path = [](const std::string& p) {
      return p.empty() ? std::nullopt : std::optional<std::filesystem::path>(p);
    };
    report_verification(verify_model(verify), opts->model, optional_path(opts->json), optional_path(opts->junit));
  });
}

}  // namespace linearize::cli
