// The diagonal sub-blocks of chunked GLA's intra-chunk scores (internal to kernels/), the one part of
// fla's secondary chunking that cannot be a matmul (docs/recipes.md#gates-in-log-space): within each
// sub-chunk of c tokens,
//   A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk)   for j <= i, zero above the diagonal,
// with G the per-chunk cumsum of the per-channel log gates (GLA paper eq. for the intra-chunk part).
// exp(G_i - G_j) is evaluated as the product of the per-step decays exp(g_t), t = j+1..i: every factor is
// <= 1, so any gate strength stays finite (a product that small underflows to 0, as the exact value would),
// and a pair costs one multiply per channel instead of an exp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace linearize::kernels::detail {

// q [M, Gq, C, K] (Gq query heads per key head), k [M, C, K], G [M, C, K] = cumsum over C of the log gates
// g [M, C, K] (the same chunks; g only evaluates the decays, the gradient flows through G).
// Returns A [M, C/c, Gq, c, c]; c must divide C. Differentiable in q, k and G. On the CPU a fused kernel
// (forward and backward by hand); on other devices gated_diagonal_scores_reference.
at::Tensor gated_diagonal_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& G, const at::Tensor& g,
                                 int64_t c);

// The CPU kernel's forward alone, from the per-step decays a = exp(g) [M, C, K] (no autograd): for callers
// that already hold a and differentiate by other means (gla_chunk_terms.h).
at::Tensor gated_diagonal_scores_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& a, int64_t c);

// The same scores from ATen ops with the pairwise exps over [c, c, K] per sub-chunk (any device, autograd by
// ATen): the oracle of the CPU kernel.
at::Tensor gated_diagonal_scores_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& G, int64_t c);

}  // namespace linearize::kernels::detail
