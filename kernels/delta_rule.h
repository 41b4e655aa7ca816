// The (gated) delta rule, DeltaNet / Gated DeltaNet (docs/kernels.md#delta-rule), fla's recurrence:
//   h_t = exp(g_t) h_{t-1};  u_t = beta_t (v_t - h_t^T k_t);  h_t += k_t u_t^T;  o_t = scale * h_t^T q_t
// in three forms: recurrent (token by token, for decode), chunked (WY form: per chunk one unit lower
// triangular solve (I + L) U = diag(beta)(V - diag(exp G) K S), then a scan over chunks) and parallel (the
// WY form with the whole sequence as one chunk: O(T^2) memory and an O(T^3) solve, the oracle).
// Layout and GQA as kernels/linear_attention.h: q [B,T,Hq,K], k [B,T,Hkv,K], v [B,T,Hkv,V], beta and the
// optional scalar log gate [B,T,Hkv]; the state [B,Hkv,K,V] is per kv head. Keys are expected unit-norm
// (fla's qk_norm='l2'), which keeps the recurrence contractive.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/linear_attention.h"

namespace linearize::kernels {

struct DeltaRuleInputs {
  at::Tensor q;          // [B, T, Hq, K]
  at::Tensor k;          // [B, T, Hkv, K]
  at::Tensor v;          // [B, T, Hkv, V]
  at::Tensor beta;       // [B, T, Hkv], the write strength in [0, 1]
  at::Tensor log_decay;  // optional [B, T, Hkv], <= 0 (Gated DeltaNet); undefined: DeltaNet
};

// Uses options.form, scale and chunk_size (normalize and sub_chunk_size do not apply). The state's k_sum
// is unused.
LinearAttentionOutput delta_rule(const DeltaRuleInputs& inputs, const LinearState& initial,
                                 const LinearAttentionOptions& options);

}  // namespace linearize::kernels
