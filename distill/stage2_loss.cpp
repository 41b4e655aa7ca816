#include "distill/stage2_loss.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

namespace linearize {

at::Tensor stage2_loss(const CausalLM& student, const CausalLM& teacher, const at::Tensor& ids, const at::Tensor& labels,
                       Stage2Loss kind) {
  const auto targets = labels.narrow(1, 1, labels.size(1) - 1).reshape({-1});
  const auto mask = targets.ne(-100);
  const auto count = std::max<std::int64_t>(mask.sum().item<std::int64_t>(), 1);
  auto predicted_log_probs = [&](const at::Tensor& logits) {
    const auto shifted = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(-1)});
    return at::log_softmax(shifted.to(at::kFloat), -1).index({mask});
  };
  const auto student_lp = predicted_log_probs(student.forward(ids));
  at::Tensor loss = at::zeros({}, student_lp.options());
  if (kind != Stage2Loss::kKl)
    loss = loss - student_lp.gather(1, targets.index({mask}).unsqueeze(1)).sum() / static_cast<double>(count);
  if (kind != Stage2Loss::kCe) {
    at::Tensor teacher_lp;
    {
      at::NoGradGuard no_grad;
      teacher_lp = predicted_log_probs(teacher.forward(ids));
    }
    loss = loss + (teacher_lp.exp() * (teacher_lp - student_lp)).sum() / static_cast<double>(count);
  }
  return loss;
}

}  // namespace linearize
