// Next-token distributions as causal LMs are scored: position t predicts token t + 1 (the HF shift), and
// KL(p || q) between two of them. Stage 2's loss, distill's quality table and verify's L4 all read these.
#pragma once

#include <ATen/ATen.h>

namespace linearize {

// Log-probabilities of logits [B, T, V] at positions 0..T-2 (the ones with a next token), flattened to
// [B (T-1), V], in `dtype` (fp32 for training, fp64 where verify compares two near-identical models);
// with `mask` [B (T-1)] only the rows it selects.
at::Tensor shifted_log_probs(const at::Tensor& logits, at::ScalarType dtype, const at::Tensor& mask = {});

// The next tokens of ids or labels [B, T] in the same flattened order: [B (T-1)].
at::Tensor shifted_targets(const at::Tensor& ids);

// Sum over rows of -log p(target): log_probs [N, V], targets [N].
at::Tensor nll_sum(const at::Tensor& log_probs, const at::Tensor& targets);

// KL(p || q) = sum_v p_v (log p_v - log q_v) per row of log-probabilities [N, V] -> [N].
at::Tensor kl_per_row(const at::Tensor& log_p, const at::Tensor& log_q);

}  // namespace linearize
