// Sliding-window softmax attention + linear attention in one token mixer, the intra-layer hybrids of
// Liger and LoLCATs (docs/recipes.md#liger-gla and docs/recipes.md#lolcats). Query n sees the keys n - window < j <= n through
// exact softmax (scores s_nj = scale q_n.k_j, scale the source's, D^-1/2 by default, every exponent s_nj - c_n <= 0, c_n the row max), and the
// linear branch covers
//   Liger  : every key j <= n with GLA; o_n = 0.5 num_n / den_n + 0.5 o_lin_n (two separate normalisers),
//            o_lin_n = phi_q(q_n)^T S_n,  S_n = diag(exp(g_n)) S_{n-1} + phi_k(k_n) v_n^T  (scale 1);
//   LoLCATs: only the keys that left the window, j <= n - window, sharing one normaliser:
//            y_n = (f num_n + sum_{j <= n-window} phi_q(q_n).phi_k(k_j) v_j)
//                / (f den_n + sum_{j <= n-window} phi_q(q_n).phi_k(k_j)),   f = sigmoid(w_h) per head,
// with num_n = sum_{window} exp(s_nj - c_n) v_j, den_n = sum_{window} exp(s_nj - c_n).
// Three forms compute the same function (docs/recipes.md#three-forms): parallel (the quadratic masked formula, the
// oracle), chunked (windowed query blocks of C rows and the linear kernel's chunked form: prefill and
// training) and recurrent (token by token: decode). The state is the linear state plus the KV cache of the
// last `window` keys, so decode sees exactly the window prefill sees.
//
// Layout is fla's: q [B,T,Hq,D], k [B,T,Hkv,D] (RoPE'd, as the cache keeps them), v [B,T,Hkv,V]. Grouped
// query heads: Hq = G Hkv and query head h reads kv head h / G; the window branch folds the G query heads
// of a kv head into its rows instead of repeating keys. The arithmetic runs in fp32 (fp64 for fp64 q), the
// output comes back in q's dtype. Every form is differentiable.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>

#include "kernels/linear_attention.h"

namespace linearize::kernels {

struct HybridState {
  LinearState linear;  // Liger: [B,Hkv,F,V]; LoLCATs: [B,Hf,F,V+1], the last column the normaliser sum z
  at::Tensor k, v;     // window cache: the last min(window, tokens seen) keys and values, [B,n,Hkv,D|V]
  // the fused decode steps keep a full cache as a ring: its oldest key at this index, not at 0.
  int64_t ring_start = 0;

  int64_t bytes() const;
};

struct HybridAttentionOptions {
  MixerForm form = MixerForm::chunked;
  int64_t window = 64;
  int64_t chunk_size = 64;      // chunked form: query block of the window branch and chunk of the linear one
  // Of q.k in the window branch: the source attention's (Gemma 3's query_pre_attn_scalar^-1/2); unset: D^-1/2.
  std::optional<double> scale = std::nullopt;
  // A stateless call over a left-padded batch: [B, T] bool, false for padding. The window branch skips padded
  // keys (kernels/softmax_attention.h's without_padded_keys) and the linear part takes no padded key's features.
  // Undefined: no padding.
  at::Tensor key_valid{};
};

struct HybridAttentionOutput {
  at::Tensor o;  // [B,T,Hq,V] in q's dtype
  HybridState state;
};

struct LigerAttentionInputs {
  at::Tensor q, k, v;       // window branch (v shared with the linear branch)
  at::Tensor phi_q, phi_k;  // linear branch features: [B,T,Hq,F], [B,T,Hkv,F]
  at::Tensor log_decay;     // [B,T,Hkv,F], GLA log gates <= 0
};

struct LolcatsAttentionInputs {
  at::Tensor q, k, v;
  at::Tensor phi_q;  // [B,T,Hq,F]
  // Maps the keys that leave the window, [B,n,Hkv,D] as given in k, to their features [B,n,Hf,F], with
  // Hf = Hq (maps per query head, as LoLCATs) or Hkv. Applied when a key leaves, so the cache holds raw keys.
  std::function<at::Tensor(const at::Tensor&)> phi_k;
  at::Tensor window_factor;  // [Hq], the logits w_h of f = sigmoid(w_h)
};

// Run over T >= 1 tokens that follow the ones `initial` has seen (a default HybridState: none).
HybridAttentionOutput liger_attention(const LigerAttentionInputs& inputs, const HybridState& initial,
                                      const HybridAttentionOptions& options);
HybridAttentionOutput lolcats_attention(const LolcatsAttentionInputs& inputs, const HybridState& initial,
                                        const HybridAttentionOptions& options);

// Liger's decode step, fused, on the CPU without autograd: for one token (T = 1) on a state whose window
// cache is full (`window` keys), one pass per kv head writes the new key over the oldest (the cache is a
// ring), takes the window softmax over it, advances the GLA state in place and mixes the two halves. It
// updates `state` in place and returns o [B,1,Hq,V] in q's dtype; an undefined tensor where it does not
// apply (then call liger_attention). Equal to liger_attention's recurrent form up to summation order.
at::Tensor liger_decode_step(const LigerAttentionInputs& inputs, HybridState& state, int64_t window,
                             std::optional<double> scale = std::nullopt);
// LoLCATs' step, the same way: the oldest cached key leaves the window through phi_k into the linear state
// (its value with a ones column), then the new key takes its slot and the two parts share one normaliser.
at::Tensor lolcats_decode_step(const LolcatsAttentionInputs& inputs, HybridState& state, int64_t window,
                               std::optional<double> scale = std::nullopt);

}  // namespace linearize::kernels
