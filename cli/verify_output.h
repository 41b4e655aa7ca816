// The flags of a verification, and its output: the table on stdout, verify.json (into an export's directory
// and/or --json), JUnit XML (--junit), and a failed check turned into exit code 1.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "cli/model_options.h"
#include "converter/verify.h"

namespace CLI {
class App;
}

namespace linearize::cli {

// The flags of a verification shared by verify and convert (which verifies what it wrote): its prompts,
// its thresholds (both take --generate-tokens; verify adds the L4 bounds), and the device and compute dtype
// (--dtype bf16 verifies an 8B model in 16 GB where fp32 would need 32).
struct VerifyFlags {
  std::string text_file, prompt_ids;
  VerifyThresholds thresholds;
  ModelOptions device;
};
// --text, --prompt-ids, --generate-tokens, --device and --dtype.
void add_verify_flags(CLI::App& cmd, VerifyFlags& flags);
// Fills options.prompts (a --text file tokenized by `model_dir`'s tokenizer), thresholds and load.
void apply_verify_flags(const VerifyFlags& flags, const std::filesystem::path& model_dir, VerifyOptions& options);

// VerifyOptions::progress for the CLI: one log line per finished stage.
void log_verify_stage(const std::string& stage, double seconds);

// Prints the table, writes verify.json into `model_dir` when it is an export (other directories are not ours
// to write into) and to `json_out`, and JUnit XML (one testcase per check) to `junit_out`. Throws CheckFailed
// when the report failed (main maps it to exit 1).
void report_verification(const VerifyReport& report, const std::filesystem::path& model_dir,
                         const std::optional<std::filesystem::path>& json_out,
                         const std::optional<std::filesystem::path>& junit_out = std::nullopt);

}  // namespace linearize::cli
