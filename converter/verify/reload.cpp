// L2: the logits recorded at export come back. record_verify_logits writes them with the device, dtype and
// thread count they were computed on; the same three ask for bit identity, any other for the rounding drift
// bound of L1 (another thread count or device reorders the same sums).
#include <ATen/Parallel.h>

#include <string>

#include "converter/verify/check.h"
#include "formats/safetensors.h"

namespace linearize {
namespace checks {
namespace {

// verify_logits.safetensors: "prompt.{i}.ids" and "prompt.{i}.logits" tensors, and the conditions as metadata.
std::string ids_name(std::size_t i) { return "prompt." + std::to_string(i) + ".ids"; }
std::string logits_name(std::size_t i) { return "prompt." + std::to_string(i) + ".logits"; }

std::map<std::string, std::string> run_conditions(const CausalLM& model) {
  return {{"device", model.options().device.str()}, {"dtype", dtype_name(model.options().dtype)},
          {"threads", std::to_string(at::get_num_threads())}};
}

void check_reload(const std::filesystem::path& dir, const CausalLM& model, double drift_bound, ReportBuilder& r) {
  const auto path = dir / kVerifyLogitsFile;
  // Only an export promises recorded logits; a plain checkpoint without them has no L2 to check.
  if (!std::filesystem::exists(path) && model.config().linearize.is_null()) return;
  if (!std::filesystem::exists(path)) {
    r.add("reload reproduces the recorded logits", 1, "==", 0, std::string(kVerifyLogitsFile) + " is missing");
    return;
  }
  const auto recorded = SafetensorsFile::open(path);
  bool exact = true;
  for (const auto& [key, value] : run_conditions(model)) {
    const auto it = recorded.metadata().find(key);
    exact = exact && it != recorded.metadata().end() && it->second == value;
  }
  Prompts prompts;
  std::vector<at::Tensor> expected;
  for (std::size_t i = 0;; ++i) {
    const auto* ids = recorded.find(ids_name(i));
    if (!ids) break;
    const auto t = recorded.tensor(ids->name).contiguous();
    prompts.emplace_back(t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel());
    expected.push_back(recorded.tensor(logits_name(i)));
  }
  const auto got = forward_prompts(model, prompts);
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const auto g = got[i].to(at::kCPU);
    worst = worse(worst, exact ? (g.to(at::kFloat) - expected[i]).abs().max().item<double>() : relative_error(g, expected[i]));
  }
  if (exact) r.add("reload reproduces the recorded logits (bit-identical)", worst, "==", 0);
  else r.add("reload reproduces the recorded logits (other device/dtype/threads)", worst, "<=", drift_bound);
}

}  // namespace

const Check kReloadCheck{"L2", "L2", kModel | kDriftBound, [](VerifyContext& c) {
                           check_reload(c.options.model, *c.model, *c.drift_bound, c.report);
                         }};

}  // namespace checks

void record_verify_logits(const std::filesystem::path& dir, const CausalLM& model,
                          const std::vector<std::vector<std::int64_t>>& prompts) {
  checks::warm_up(model, prompts);
  const auto logits = checks::forward_prompts(model, prompts);
  NamedTensors tensors;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    tensors.emplace_back(checks::ids_name(i), at::tensor(prompts[i], at::kLong));
    tensors.emplace_back(checks::logits_name(i), logits[i].to(at::kCPU, at::kFloat).contiguous());
  }
  write_safetensors(dir / kVerifyLogitsFile, tensors, checks::run_conditions(model));
}

}  // namespace linearize
