// Prints a verification report, writes verify.json (into the model directory and/or --json), and turns a
// failed check into exit code 1.
#pragma once

#include <cstdint>
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
// the greedy continuation length, and the device and compute dtype (--dtype bf16 verifies an 8B model in
// 16 GB where fp32 would need 32).
struct VerifyFlags {
  std::string text_file, prompt_ids;
  std::int64_t generate_tokens = 32;
  ModelOptions device;
};
void add_verify_flags(CLI::App& cmd, VerifyFlags& flags);
// Fills options.prompts (a --text file tokenized by `model_dir`'s tokenizer), generate_tokens and load.
void apply_verify_flags(const VerifyFlags& flags, const std::filesystem::path& model_dir, VerifyOptions& options);

// Throws CheckFailed when the report failed (main maps it to exit 1).
// VerifyOptions::progress for the CLI: one log line per finished stage.
void log_verify_stage(const std::string& stage, double seconds);

// `junit_out`: also the report as JUnit XML there, one testcase per check.
void report_verification(const VerifyReport& report, const std::filesystem::path& model_dir,
                         const std::optional<std::filesystem::path>& json_out,
                         const std::optional<std::filesystem::path>& junit_out = std::nullopt);

}  // namespace linearize::cli
