#include "converter/next_token.h"

namespace linearize {

at::Tensor shifted_log_probs(const at::Tensor& logits, at::ScalarType dtype, const at::Tensor& mask) {
  const auto shifted = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(-1)});
  const auto log_probs = at::log_softmax(shifted.to(dtype), -1);
  return mask.defined() ? log_probs.index({mask}) : log_probs;
}

at::Tensor shifted_targets(const at::Tensor& ids) { return ids.narrow(1, 1, ids.size(1) - 1).reshape({-1}); }

at::Tensor nll_sum(const at::Tensor& log_probs, const at::Tensor& targets) {
  return -log_probs.gather(1, targets.to(log_probs.device()).unsqueeze(1)).sum();
}

at::Tensor kl_per_row(const at::Tensor& log_p, const at::Tensor& log_q) { return (log_p.exp() * (log_p - log_q)).sum(-1); }

}  // namespace linearize
