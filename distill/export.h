// The end of a distill run: <out>/model, the converted directory with the trained tensors and stage 2's
// adapters, and its verification against the source.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "converter/model/lora.h"
#include "converter/verify.h"
#include "distill/run_config.h"
#include "formats/safetensors.h"

namespace linearize {

// Writes `out` from `converted` with `trained` replacing their tensors. Weights first, config.json last (a
// directory counts as a model once config.json is there); the copied tensors keep their sha256 record.
// Stage 2's adapters go to <out>/adapter (PEFT) or, with stage2.merge, into the weights (fp32 merge,
// finiteness checked), and config.json's linearize.lora_merged lists the merged tensors so verify knows
// they are no longer the source's.
void export_model(const std::filesystem::path& converted, const std::filesystem::path& out, const NamedTensors& trained,
                  const std::vector<std::shared_ptr<LoraLinear>>& adapters, const RunConfig& config);

// Records the export's verify logits and verifies it against the run's source, with the run's verify
// thresholds (verify.max_kl, min_top1, min_gen_agree).
VerifyReport verify_export(const std::filesystem::path& out, const RunConfig& config);

}  // namespace linearize
