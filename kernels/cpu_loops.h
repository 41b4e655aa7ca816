// The per-head loops the fused CPU kernels share (internal to kernels/): inlined into each kernel's
// multiversioned entry points (kernels/cpu_multiversion.h), so they vectorise for the clone's ISA.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>

#include "kernels/cpu_multiversion.h"

namespace linearize::kernels::detail {

// A bf16 / fp16 value (its bits) widened to fp32. bf16 is fp32's top half; fp16 goes through the
// compiler's _Float16 (F16C where the clone has it).
LINEARIZE_INLINE float widen(std::uint16_t bits, bool bf16) {
  if (bf16) {
    const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return f;
  }
  _Float16 h;
  std::memcpy(&h, &bits, sizeof h);
  return static_cast<float>(h);
}

// fp32 rounded to nearest-even bf16 / fp16 bits, as at::Tensor::to rounds.
LINEARIZE_INLINE std::uint16_t narrow(float f, bool bf16) {
  if (bf16) return c10::BFloat16(f).x;
  const _Float16 h = static_cast<_Float16>(f);
  std::uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

// Element i of a cache as the accumulation type Acc: 16-bit caches arrive as their bits.
template <typename Acc, typename KV, bool kBf16>
LINEARIZE_INLINE Acc load(const KV* p, int64_t i) {
  if constexpr (std::is_same_v<KV, std::uint16_t>) {
    return widen(p[i], kBf16);
  } else {
    return p[i];
  }
}

// x . y over n, y loaded as Acc; 16 partial sums make it vectorise.
template <typename Acc, typename KV, bool kBf16>
LINEARIZE_INLINE Acc dot(const Acc* x, const KV* y, int64_t n) {
  constexpr int64_t L = 16;
  Acc part[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int64_t l = 0; l < L; ++l) part[l] += x[i + l] * load<Acc, KV, kBf16>(y, i + l);
  Acc sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += part[l];
  for (; i < n; ++i) sum += x[i] * load<Acc, KV, kBf16>(y, i);
  return sum;
}

// One token of the gated linear recurrence for one kv head, as ggml's GATED_LINEAR_ATTN: the state
// S = diag(decay) S_prev + k v^T (docs/kernels.md#linear-attention) row by row, each new row added into the G query
// heads' outputs o_g = scale S^T q_g while it is in cache, so the state [K, V'] is read and written once.
// decay: K per-channel factors, or null for scalar_decay on every row. S may be S_prev (in place).
template <typename T>
LINEARIZE_INLINE void gla_token(const T* q, const T* k, const T* v, const T* decay, T scalar_decay, const T* S_prev,
                                T* S, T* o, int64_t G, int64_t K, int64_t Vp, T scale) {
  std::fill(o, o + G * Vp, T(0));
  for (int64_t i = 0; i < K; ++i) {
    const T d = decay ? decay[i] : scalar_decay, ki = k[i];
    const T* from = S_prev + i * Vp;
    T* row = S + i * Vp;
    for (int64_t j = 0; j < Vp; ++j) row[j] = d * from[j] + ki * v[j];
    for (int64_t g = 0; g < G; ++g) {
      const T qi = scale * q[g * K + i];
      T* out = o + g * Vp;
      for (int64_t j = 0; j < Vp; ++j) out[j] += qi * row[j];
    }
  }
}

}  // namespace linearize::kernels::detail
