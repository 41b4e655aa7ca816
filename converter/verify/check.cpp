#include "converter/verify/check.h"

#include <cmath>

namespace linearize::checks {

void ReportBuilder::add(std::string name, double value, std::string comparison, double tolerance, std::string detail) {
  CheckResult c{level, std::move(name), value, comparison, tolerance, true, true, std::move(detail)};
  if (comparison == "<=") c.passed = value <= tolerance;
  else if (comparison == ">=") c.passed = value >= tolerance;
  else if (comparison == "==") c.passed = value == tolerance;
  if (std::isnan(value)) c.passed = false;
  report.checks.push_back(std::move(c));
}

void ReportBuilder::info(std::string name, double value, std::string detail) {
  report.checks.push_back({level, std::move(name), value, "", 0, false, true, std::move(detail)});
}

double worse(double a, double b) { return std::isnan(a) || b <= a ? a : b; }

double relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  const auto e = expected.to(at::kDouble);
  const double scale = e.abs().max().item<double>();
  return (actual.to(at::kDouble) - e).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

at::Tensor as_batch(const std::vector<std::int64_t>& ids, const at::Device& device) {
  return at::tensor(ids, at::kLong).unsqueeze(0).to(device);
}

std::string dtype_name(at::ScalarType t) { return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "fp32"; }

void warm_up(const CausalLM& model, const Prompts& prompts) { model.warm_up(as_batch(prompts.front(), model.options().device)); }

std::vector<at::Tensor> forward_prompts(const CausalLM& model, const Prompts& prompts, kernels::MixerForm form,
                                        const PromptCaptureFn& capture) {
  std::vector<SequenceRun> runs;
  for (std::size_t n = 0; n < prompts.size(); ++n) {
    SequenceRun run{as_batch(prompts[n], model.options().device), {}, form, {}};
    if (capture) run.capture = [&capture, n](const std::string& name, const at::Tensor& t) { capture(n, name, t); };
    runs.push_back(std::move(run));
  }
  auto logits = model.run_layer_major(runs);
  for (auto& l : logits) l = l[0];
  return logits;
}

std::vector<std::int64_t> kept_softmax_layers(const ModelConfig& config) {
  return config.linearize.is_null() ? std::vector<std::int64_t>{}
                                    : config.linearize.value("softmax_layers", std::vector<std::int64_t>{});
}

std::set<std::string> merged_lora_tensors(const ModelConfig& config) {
  std::set<std::string> merged;
  if (config.linearize.contains("lora_merged"))
    for (const auto& name : config.linearize["lora_merged"].value("tensors", nlohmann::json::array())) merged.insert(name.get<std::string>());
  return merged;
}

}  // namespace linearize::checks
