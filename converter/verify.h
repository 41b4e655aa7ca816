// The verification contract (docs/verification.md): structure (L0), the three forms agree (L1), the export
// reproduces the logits it recorded (L2), exactness where the conversion must be exact (L3), agreement
// with the source (L4), and where the directory holds model.onnx its graph's structure (L6: checker, shape
// inference, weights byte-identical). One row per check, never a warning: a failed check fails the report.
// L5 (transformers) and L6's onnxruntime parity run in Python: scripts/check_hf_export.py, check_onnx_export.py.
// The checks live one level a file in converter/verify/; verify.cpp runs them from its table.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "converter/model/causal_lm.h"
#include "converter/verify/report.h"
#include "converter/verify/thresholds.h"

namespace linearize {

// The prompts verify runs on, and where they came from (the report says).
struct VerifyPrompts {
  std::vector<std::vector<std::int64_t>> ids;
  std::string origin;  // "built-in text", "random token ids (no tokenizer.json)", "--text FILE"
};

struct VerifyOptions {
  std::filesystem::path model;
  std::optional<std::filesystem::path> source;  // enables the byte comparison of copies, L3 and L4
  VerifyPrompts prompts;                        // L1/L4 prompts; empty: builtin_verify_prompts
  VerifyThresholds thresholds;
  LoadOptions load;
  // Called as each stage ends ("L1 per layer fp64", ...) with its wall seconds: verify of a real model
  // takes minutes, and the CLI shows where they go.
  std::function<void(const std::string& stage, double seconds)> progress;
};

VerifyReport verify_model(const VerifyOptions& options);

// The prompts of L1/L2/L4 when none are given: the built-in real text (verify_text.h) tokenized by the
// model directory's tokenizer, cut to lengths at the chunk and window edges (1, C-1, C, C+1, W-1, W, W+1
// and 2 max(W, C) + C + 1, so a window cache evicts); random token ids, said in `origin`, when there is no tokenizer.
VerifyPrompts builtin_verify_prompts(const std::filesystem::path& dir, const ModelConfig& config);

// The prompts of a text file (--text FILE), tokenized by the model directory's tokenizer and cut into prompts
// of at most 256 tokens (past every default window, short enough for L1's token-by-token decode). An
// unreadable or tokenless file is InputError(file, "--text").
VerifyPrompts text_file_prompts(const std::filesystem::path& dir, const std::filesystem::path& file);

inline constexpr const char* kVerifyLogitsFile = "verify_logits.safetensors";
inline constexpr const char* kVerifyReportFile = "verify.json";

// Writes dir/verify_logits.safetensors: the prompts and the logits `model` computes for them (with the
// device, dtype and thread count), which L2 of every later verify must reproduce.
void record_verify_logits(const std::filesystem::path& dir, const CausalLM& model,
                          const std::vector<std::vector<std::int64_t>>& prompts);

// What every export does last (convert, distill): record the logits of options.prompts (the built-in ones
// when none are given) from the export as loaded, then verify it against its source with `options` (model
// and source are set here).
VerifyReport record_and_verify(const std::filesystem::path& dir, const std::filesystem::path& source,
                               VerifyOptions options = {});

}  // namespace linearize
