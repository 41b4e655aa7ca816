#include "distill/stage2_loss.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "converter/next_token.h"

namespace linearize {

at::Tensor stage2_loss(const CausalLM& student, const CausalLM& teacher, const at::Tensor& ids, const at::Tensor& labels,
                       Stage2Loss kind, const TeacherTopK* cached) {
  const auto targets = shifted_targets(labels);
  const auto mask = targets.ne(-100);
  const auto count = static_cast<double>(std::max<std::int64_t>(mask.sum().item<std::int64_t>(), 1));
  const auto student_lp = shifted_log_probs(student.forward(ids), at::kFloat, mask);
  at::Tensor loss = at::zeros({}, student_lp.options());
  if (kind != Stage2Loss::kKl) loss = loss + nll_sum(student_lp, targets.index({mask})) / count;
  if (kind != Stage2Loss::kCe && cached) {
    // [R, T-1, ...] -> the predicted rows, in shifted_log_probs' order.
    const auto rows = [&](const at::Tensor& t) { return t.flatten(0, 1).to(student_lp.device()).index({mask}); };
    loss = loss + top_k_kl_per_row(rows(cached->log_probs), rows(cached->ids), rows(cached->other_log_mass), student_lp).sum() / count;
  } else if (kind != Stage2Loss::kCe) {
    at::Tensor teacher_lp;
    {
      at::NoGradGuard no_grad;
      teacher_lp = shifted_log_probs(teacher.forward(ids), at::kFloat, mask);
    }
    loss = loss + kl_per_row(teacher_lp, student_lp).sum() / count;
  }
  return loss;
}

}  // namespace linearize
