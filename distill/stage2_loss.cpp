#include "distill/stage2_loss.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "converter/next_token.h"
#include "kernels/checkpoint.h"

namespace linearize {
namespace {

// Rows [B (T-1), ...] of per-position tensors [B, T, ...] in shifted_log_probs' order (position t predicts t+1).
at::Tensor shifted_rows(const at::Tensor& per_position) {
  return per_position.narrow(1, 0, per_position.size(1) - 1).reshape({-1, per_position.size(-1)});
}

// The cached teacher's rows [B (T-1), ...] (on `device`).
TeacherTopK flattened(const TeacherTopK& cached, const at::Device& device) {
  return {cached.log_probs.flatten(0, 1).to(device), cached.ids.flatten(0, 1).to(device),
          cached.other_log_mass.flatten(0, 1).to(device)};
}

}  // namespace

at::Tensor stage2_loss(const CausalLM& student, const CausalLM& teacher, const at::Tensor& ids, const at::Tensor& labels,
                       Stage2Loss kind, const TeacherTopK* cached, std::int64_t head_chunk_elements) {
  const auto targets = shifted_targets(labels);
  const auto mask = targets.ne(-100);
  const auto count = static_cast<double>(std::max<std::int64_t>(mask.sum().item<std::int64_t>(), 1));
  if (student.checkpoint_blocks()) {
    // The head a slice of positions at a time, each slice checkpointed: [rows, vocab] logits, log-probs and
    // the teacher's exist for one slice at once, not for the whole batch (at a 128K vocabulary they are the
    // largest training tensors: 512 MB each per 1024-token sequence in fp32).
    const auto hidden = shifted_rows(student.hidden_states(ids));
    at::Tensor teacher_hidden;
    if (kind != Stage2Loss::kCe && !cached) {
      const at::NoGradGuard no_grad;
      teacher_hidden = shifted_rows(teacher.hidden_states(ids));
    }
    const auto top = cached ? flattened(*cached, hidden.device()) : TeacherTopK{};
    const std::int64_t rows = hidden.size(0), slice = std::max<std::int64_t>(1, head_chunk_elements / student.config().vocab_size);
    at::Tensor loss = at::zeros({}, hidden.options().dtype(at::kFloat));
    for (std::int64_t first = 0; first < rows; first += slice) {
      const auto n = std::min(slice, rows - first);
      const auto m = mask.narrow(0, first, n);
      if (!m.any().item<bool>()) continue;
      const auto t = targets.narrow(0, first, n).index({m});
      const auto th = teacher_hidden.defined() ? teacher_hidden.narrow(0, first, n) : at::Tensor();
      const auto part = [&](const at::Tensor& x) { return x.defined() ? x.narrow(0, first, n).index({m}) : at::Tensor(); };
      const TeacherTopK slice_top{part(top.log_probs), part(top.ids), part(top.other_log_mass)};
      const auto* s = &student;
      const auto* te = &teacher;
      loss = loss + kernels::checkpointed(
                        [s, te, m, t, th, slice_top, kind, count](const at::Tensor& x) {
                          const auto student_lp = at::log_softmax(s->logits_of(x).to(at::kFloat), -1).index({m});
                          at::Tensor sum = at::zeros({}, student_lp.options());
                          if (kind != Stage2Loss::kKl) sum = sum + nll_sum(student_lp, t) / count;
                          if (kind == Stage2Loss::kCe) return sum;
                          if (slice_top.log_probs.defined())
                            return sum + top_k_kl_per_row(slice_top.log_probs, slice_top.ids, slice_top.other_log_mass, student_lp).sum() / count;
                          at::Tensor teacher_lp;
                          {
                            const at::NoGradGuard no_grad;
                            teacher_lp = at::log_softmax(te->logits_of(th).to(at::kFloat), -1).index({m});
                          }
                          return sum + kl_per_row(teacher_lp, student_lp).sum() / count;
                        },
                        hidden.narrow(0, first, n));
    }
    return loss;
  }
  const auto student_lp = shifted_log_probs(student.forward(ids), at::kFloat, mask);
  at::Tensor loss = at::zeros({}, student_lp.options());
  if (kind != Stage2Loss::kKl) loss = loss + nll_sum(student_lp, targets.index({mask})) / count;
  if (kind != Stage2Loss::kCe && cached) {
    const auto top = flattened(*cached, student_lp.device());
    loss = loss + top_k_kl_per_row(top.log_probs.index({mask}), top.ids.index({mask}), top.other_log_mass.index({mask}), student_lp).sum() / count;
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
