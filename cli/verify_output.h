// Prints a verification report, writes verify.json (into the model directory and/or --json), and turns a
// failed check into exit code 1.
#pragma once

#include <filesystem>
#include <optional>

#include "converter/verify.h"

namespace linearize::cli {

// Throws CheckFailed when the report failed (main maps it to exit 1).
// VerifyOptions::progress for the CLI: one log line per finished stage.
void log_verify_stage(const std::string& stage, double seconds);

// `junit_out`: also the report as JUnit XML there, one testcase per check.
void report_verification(const VerifyReport& report, const std::filesystem::path& model_dir,
                         const std::optional<std::filesystem::path>& json_out,
                         const std::optional<std::filesystem::path>& junit_out = std::nullopt);

}  // namespace linearize::cli
