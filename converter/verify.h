// The verification contract (DESIGN section 6): structure (L0), the three forms agree (L1), the export
// reproduces the logits it recorded (L2), exactness where the conversion must be exact (L3), agreement
// with the source (L4). One row per check, never a warning: a failed check fails the report.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/model/causal_lm.h"

namespace linearize {

struct VerifyOptions {
  std::filesystem::path model;
  std::optional<std::filesystem::path> source;     // enables the byte comparison of copies, L3 and L4
  std::vector<std::vector<std::int64_t>> prompts;  // L1/L4 prompts; empty: the built-in set
  std::optional<double> max_kl, min_top1;          // L4 thresholds, enforced when set
  double layer_budget = 0.25;                       // L4: per-layer hidden-state relative error budget
  LoadOptions load;
};

struct CheckResult {
  std::string level;       // "L0" .. "L4"
  std::string name;
  double value = 0;
  std::string comparison;  // "<=", ">=", "==" or "" for a reported figure
  double tolerance = 0;
  bool enforced = true;    // false: reported only (an L4 figure without a threshold)
  bool passed = true;
  std::string detail;      // what failed, by name
};

struct VerifyReport {
  std::vector<CheckResult> checks;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();  // L4 per-layer relative errors
  bool passed() const;
  nlohmann::ordered_json to_json() const;
  std::string table() const;  // one row per check: level, check, value, tolerance, PASS/FAIL
};

VerifyReport verify_model(const VerifyOptions& options);

// Deterministic prompts for L1/L2/L4 when none are given: 2 x 96 ids drawn from the vocabulary with a
// fixed seed, long enough to pass every default window (64).
std::vector<std::vector<std::int64_t>> builtin_verify_prompts(std::int64_t vocab_size);

inline constexpr const char* kVerifyLogitsFile = "verify_logits.safetensors";
inline constexpr const char* kVerifyReportFile = "verify.json";

// Writes dir/verify_logits.safetensors: the prompts and the logits `model` computes for them (with the
// device, dtype and thread count), which L2 of every later verify must reproduce.
void record_verify_logits(const std::filesystem::path& dir, const CausalLM& model,
                          const std::vector<std::vector<std::int64_t>>& prompts);

}  // namespace linearize
