#include "distill/evaluate.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "converter/next_token.h"
#include "distill/attention_transfer.h"

namespace linearize {

QualityFigures evaluate_quality(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches) {
  at::NoGradGuard no_grad;
  double teacher_nll = 0, student_nll = 0, kl = 0;
  std::int64_t count = 0;
  for (const auto& batch : batches) {
    const auto ids = batch.input_ids.to(source.options().device);
    // -100 labels carry no loss.
    const auto labels = shifted_targets(batch.labels).to(ids.device());
    const auto mask = labels.ne(-100);
    const auto teacher = shifted_log_probs(source.forward(ids), at::kFloat, mask);
    const auto pupil = shifted_log_probs(student.forward(ids), at::kFloat, mask);
    const auto targets = labels.index({mask});
    teacher_nll += nll_sum(teacher, targets).item<double>();
    student_nll += nll_sum(pupil, targets).item<double>();
    kl += kl_per_row(teacher, pupil).sum().item<double>();
    count += targets.size(0);
  }
  const auto n = static_cast<double>(std::max<std::int64_t>(count, 1));
  return {std::exp(teacher_nll / n), std::exp(student_nll / n), kl / n};
}

ValidationLoss validation_transfer_loss(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches,
                                        const Stage1Config& stage) {
  at::NoGradGuard no_grad;
  ValidationLoss total;
  for (const auto& batch : batches) {
    const auto r = attention_transfer_loss(student, source, batch.input_ids.to(source.options().device), stage.factor, stage.loss);
    total.loss += r.loss.item<double>();
    total.layer_loss.resize(r.layer_loss.size());
    for (std::size_t i = 0; i < r.layer_loss.size(); ++i) total.layer_loss[i] += r.layer_loss[i];
  }
  const auto n = static_cast<double>(batches.size());
  total.loss /= n;
  for (auto& v : total.layer_loss) v /= n;
  return total;
}

double stage2_validation_loss(const QualityFigures& q, Stage2Loss kind) {
  const double ce = std::log(q.student_perplexity);
  return kind == Stage2Loss::kCe ? ce : kind == Stage2Loss::kKl ? q.kl : ce + q.kl;
}

}  // namespace linearize
