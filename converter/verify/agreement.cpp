// L4: the model against its source: next-token distributions, greedy generation and hidden states, each
// enforced where the caller set a threshold (VerifyThresholds) and reported otherwise.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "converter/names.h"
#include "converter/next_token.h"
#include "converter/verify/check.h"
#include "converter/verify/prompts.h"

namespace linearize::checks {
namespace {

// A figure enforced against its threshold when there is one, reported otherwise.
void add_figure(ReportBuilder& r, std::string name, double value, const char* comparison, const std::optional<double>& threshold,
                std::string detail = "") {
  if (threshold) r.add(std::move(name), value, comparison, *threshold, std::move(detail));
  else r.info(std::move(name), value, std::move(detail));
}

// The next-token figures over every prompt, in fp64 (near-identical models), and each layer's worst hidden-state
// relative error.
struct Agreement {
  std::vector<double> kls;  // KL(source || model) per position
  double agree = 0, positions = 0, nll_model = 0, nll_source = 0, targets = 0;
  std::vector<double> layer_error;
};

// One prompt's next-token figures, from the model's logits for it.
void compare_prompt(const at::Tensor& model_logits, const SourceOutputs& source, std::size_t n, const std::vector<std::int64_t>& prompt,
                    Agreement& a) {
  const auto ids = as_batch(prompt, at::kCPU);
  const auto ls = at::log_softmax(source.logits[n].to(at::kCPU, at::kDouble), -1);
  const auto lm = at::log_softmax(model_logits.to(at::kCPU, at::kDouble), -1);
  const auto kl = kl_per_row(ls, lm);
  for (std::int64_t t = 0; t < kl.size(0); ++t) a.kls.push_back(kl[t].item<double>());
  a.agree += ls.argmax(-1).eq(lm.argmax(-1)).sum().item<double>();
  a.positions += static_cast<double>(kl.size(0));
  const auto next = shifted_targets(ids);
  a.nll_source += nll_sum(ls.narrow(0, 0, ids.size(1) - 1), next).item<double>();
  a.nll_model += nll_sum(lm.narrow(0, 0, ids.size(1) - 1), next).item<double>();
  a.targets += static_cast<double>(ids.size(1) - 1);
}

void add_distribution_rows(Agreement& a, const VerifyThresholds& thresholds, ReportBuilder& r) {
  std::sort(a.kls.begin(), a.kls.end());
  double mean_kl = 0;
  for (const double k : a.kls) mean_kl += k;
  mean_kl /= static_cast<double>(a.kls.size());
  const double p99 = a.kls[static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(a.kls.size()))) - 1];
  add_figure(r, "mean KL(source || model)", mean_kl, "<=", thresholds.max_kl);
  r.info("p99 KL(source || model)", p99);
  add_figure(r, "top-1 agreement with the source", a.agree / a.positions, ">=", thresholds.min_top1);
  r.info("perplexity ratio (model / source) on the prompts", std::exp((a.nll_model - a.nll_source) / a.targets));
}

// Greedy generation: where the model's continuation first leaves the source's (likelihood figures can
// hide large generative gaps). The value is the mean fraction of tokens before the first divergence.
void add_generation_row(const CausalLM& model, const SourceOutputs& source, const Prompts& prompts,
                        const VerifyThresholds& thresholds, ReportBuilder& r) {
  const auto gen = generation_prompts(prompts);
  const auto tokens = thresholds.generate_tokens;
  if (gen.empty() || tokens <= 0) return;
  double position_sum = 0;
  std::size_t identical = 0;
  const auto continuations = greedy(model, gen, tokens);
  for (std::size_t n = 0; n < gen.size(); ++n) {
    const auto& ours = continuations[n];
    const auto& theirs = source.continuations[n];
    const auto first = static_cast<std::size_t>(std::mismatch(ours.begin(), ours.end(), theirs.begin()).first - ours.begin());
    position_sum += static_cast<double>(first);
    identical += first == ours.size();
  }
  const double mean_first = position_sum / static_cast<double>(gen.size());
  std::ostringstream detail;
  detail << "mean first divergence at token " << format_value(mean_first) << " of " << tokens << "; " << identical << " of "
         << gen.size() << " continuations identical";
  add_figure(r, "greedy generation agreement (tokens before first divergence)", mean_first / static_cast<double>(tokens), ">=",
             thresholds.min_gen_agree, detail.str());
}

void add_layer_rows(const std::vector<double>& layer_error, double budget, ReportBuilder& r) {
  std::int64_t first_over = -1;
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(layer_error.size()); ++i) {
    const double e = layer_error[static_cast<std::size_t>(i)];
    r.report.layers.push_back({{"layer", i}, {"relative_error", e}, {"over_budget", e > budget}});
    if (first_over < 0 && e > budget) first_over = i;
  }
  r.info("first layer whose hidden-state error exceeds " + format_value(budget), static_cast<double>(first_over),
         first_over < 0 ? "none" : "layer " + std::to_string(first_over));
}

void check_agreement(const CausalLM& model, const SourceOutputs& source, const Prompts& prompts,
                     const VerifyThresholds& thresholds, ReportBuilder& r) {
  Agreement a;
  a.layer_error.assign(static_cast<std::size_t>(model.config().num_hidden_layers), 0.0);
  // Each layer's output compared as the forward makes it (every prompt at a layer before the next layer).
  const auto compare_layer = [&a, &source](std::size_t n, const std::string& name, const at::Tensor& t) {
    const auto what = names::parse_capture(name);
    if (!what || what->what != names::Capture::out) return;
    auto& error = a.layer_error[static_cast<std::size_t>(what->layer)];
    error = worse(error, relative_error(t, source.captured[n].at(name)));
  };
  const auto logits = forward_prompts(model, prompts, kernels::MixerForm::chunked, compare_layer);
  for (std::size_t n = 0; n < prompts.size(); ++n) compare_prompt(logits[n], source, n, prompts[n], a);
  add_distribution_rows(a, thresholds, r);
  add_generation_row(model, source, prompts, thresholds, r);
  add_layer_rows(a.layer_error, thresholds.layer_budget, r);
}

}  // namespace

const Check kAgreementCheck{"L4", "L3 and L4", kModel | kSource | kPrompts, [](VerifyContext& c) {
                              check_agreement(*c.model, *c.source, c.prompts->ids, c.options.thresholds, c.report);
                            }};

}  // namespace linearize::checks
