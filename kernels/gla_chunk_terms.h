// The per-chunk terms of chunked GLA with per-channel gates (internal to kernels/; docs/recipes.md#gates-in-log-space,
// fla's secondary chunking with sub-chunks of c tokens). Per chunk of C tokens, with G the chunk's inclusive
// cumsum of the log gates, ref_a = G at the first row of sub-chunk a and G_last = G at the chunk's last row:
//   qdecayed  q_i exp(G_i)                 (reads the state at the chunk's start)
//   kdecayed  k_j exp(G_last - G_j)        (writes the state at the chunk's end), decay = exp(G_last)
//   qsub      q_i exp(G_i - ref_a)         (query rows of sub-chunk a)
//   keys      k_j exp(ref_a - G_j), j < a*c (the keys sub-chunk a >= 1 attends to before its own)
//   diagonal  the exact c x c blocks (gated_diagonal.h)
// so an off-diagonal block of the intra-chunk scores is qsub_a keys_a^T. Gates are <= 0, G never increases
// along a chunk, and every exponent above is <= 0.
//
// Without autograd on the CPU (prefill, decode, verify), one fused pass per chunk evaluates every
// exp(G_x - G_y) as a product of per-step decays exp(g_t) <= 1: one exp per element instead of ~5 exps, a
// cumsum and ~10 multiplies as separate ATen passes, and any gate strength stays finite. With autograd, and
// on other devices, the ATen reference runs (its diagonal blocks have gated_diagonal's hand-written
// backward). Recording the reference directly trains faster than recomputing it inside a custom backward
// (forward + backward of the mixer), so the reference is what autograd records.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace linearize::kernels::detail {

struct GlaChunkTerms {
  at::Tensor qdecayed;  // [M, Gq, C, K]
  at::Tensor kdecayed;  // [M, C, K]
  at::Tensor decay;     // [M, K]
  at::Tensor qsub;      // [M, C/c, Gq, c, K]: sub-chunk a's rows of the Gq query heads, one block per a
  at::Tensor keys;      // [M, c * NC (NC - 1) / 2, K]: sub-chunk a's keys (a*c rows) from row c * a (a - 1) / 2
  at::Tensor diagonal;  // [M, C/c, Gq, c, c]
};

// The first row of sub-chunk a's block in GlaChunkTerms::keys.
inline int64_t sub_chunk_keys_offset(int64_t a, int64_t c) { return c * a * (a - 1) / 2; }

// q [M, Gq, C, K] (Gq query heads per key head, already scaled), k and g (log gates <= 0) [M, C, K]; c
// divides C. Differentiable in q, k and g (through the reference).
GlaChunkTerms gla_chunk_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c);

// The same terms from ATen ops on exp(cumsum(g)) (any device, autograd by ATen): the CPU kernel's oracle and
// the graph its backward differentiates.
GlaChunkTerms gla_chunk_terms_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c);

}  // namespace linearize::kernels::detail
