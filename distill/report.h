// <out>/report.html of a distill run: the run's figures, its loss curves from metrics.jsonl, and stage 1's
// per-layer loss before and after.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "distill/eval.h"
#include "distill/run.h"

namespace linearize {

// `layers`: the converted layers stage 1 trained, in the order of metrics.jsonl's val_layer_loss (empty:
// no per-layer chart); `eval`: the trained student's eval (eval.text), whose charts and tables the report gains.
void write_report(const std::filesystem::path& out, const RunConfig& config, const DistillResult& result,
                  const std::vector<std::int64_t>& layers, const EvalResult* eval = nullptr);

}  // namespace linearize
