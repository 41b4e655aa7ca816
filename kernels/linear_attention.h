// Gated linear attention in three forms that compute the same function (docs/recipes.md#three-forms):
//   parallel  : the quadratic masked form, the oracle (O(T^2) memory; O(T^2 K) with per-channel gates);
//   chunked   : chunks of C tokens, batched matmuls inside a chunk and a scan over chunk states, for
//               prefill and training (docs/recipes.md#gates-in-log-space);
//   recurrent : token by token on a state [B, H_kv, K, V], for decode.
// One recurrence covers linear attention, simple GLA / retention and GLA:
//   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
// with g_t = 0 (linear attention), a scalar per head and step (simple GLA), a fixed per-head
// log gamma (RetNet / Lightning / SUPRA) or one value per key channel (GLA). Normalised linear attention
// also carries z_t = diag(exp(g_t)) z_{t-1} + k_t and returns o_t / (scale q_t.z_t + eps) (fla's
// normalize=True, docs/kernels.md#linear-attention).
//
// Layout is fla's, sequence first: q [B,T,Hq,K], k [B,T,Hkv,K], v [B,T,Hkv,V], o [B,T,Hq,V].
// Grouped-query attention: Hq = G * Hkv and query head h reads kv head h / G. The state only depends on
// k, v and the gates, so it is kept per kv head (G times smaller than per query head) and nothing is
// repeated. Gates are log decays (<= 0) in log space; inside a chunk only exp(G_i - G_j) with i >= j
// appears, so every exponent is <= 0.
// Inputs of any floating dtype; the arithmetic runs in fp32 (fp64 if any input is fp64), the state is
// fp32/fp64 and the output comes back in q's dtype. Every form is differentiable with autograd.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace linearize::kernels {

enum class MixerForm { parallel, chunked, recurrent };

const char* to_string(MixerForm form);

// The recurrent state a mixer carries between calls (an undefined `kv` means "start from zero").
struct LinearState {
  at::Tensor kv;     // [B, Hkv, K, V], fp32 (fp64 for fp64 inputs)
  at::Tensor k_sum;  // [B, Hkv, K], the normaliser's running sum; defined only for normalised attention

  bool empty() const { return !kv.defined(); }
  // Bytes held: B*Hkv*K*V (+ B*Hkv*K) elements of the state dtype.
  int64_t bytes() const;
};

struct LinearAttentionInputs {
  at::Tensor q;  // [B, T, Hq, K], feature-mapped already (kernels/feature_maps.h)
  at::Tensor k;  // [B, T, Hkv, K]
  at::Tensor v;  // [B, T, Hkv, V]
  // At most one of the two gates (neither: plain linear attention):
  at::Tensor log_decay;  // log of the decay, <= 0: [B, T, Hkv] (simple GLA) or [B, T, Hkv, K] (GLA)
  at::Tensor log_gamma;  // [Hkv], a fixed per-head log decay <= 0 (retention, SUPRA's gamma_h)
};

struct LinearAttentionOptions {
  MixerForm form = MixerForm::chunked;
  std::optional<double> scale;  // default K^-0.5 (fla's default)
  bool normalize = false;       // divide by scale * q.z + eps
  double eps = 1e-10;           // fla's normaliser epsilon
  int64_t chunk_size = 64;      // C, chunked form only
  // c, per-channel gates only: the chunk's C/c sub-chunks, matmuls between sub-chunks and exact decays
  // inside one (fla's secondary chunking, 16 as in fla). Rounded down to a divisor of C.
  int64_t sub_chunk_size = 16;
};

struct LinearAttentionOutput {
  at::Tensor o;  // [B, T, Hq, V] in q's dtype
  LinearState state;
};

// Runs the mixer over T >= 1 tokens starting from `initial` (empty: zero state) and returns the output
// and the state after the last token. Throws c10::Error on inconsistent shapes.
LinearAttentionOutput linear_attention(const LinearAttentionInputs& inputs, const LinearState& initial,
                                       const LinearAttentionOptions& options);

// The same, consuming `initial` (a decode loop's state): where nothing else holds its storage, the
// recurrent form's CPU step writes the new state over it, as ggml's loop does, instead of into a fresh
// [B,Hkv,K,V] tensor (2 MiB at H=32, d=128, whose page faults cost more than the step itself).
LinearAttentionOutput linear_attention(const LinearAttentionInputs& inputs, LinearState&& initial,
                                       const LinearAttentionOptions& options);

}  // namespace linearize::kernels
