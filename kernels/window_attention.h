// Sliding-window softmax attention split into its numerator and denominator, so a hybrid can either
// normalise it on its own (Liger: o_swa = num / den) or share the normaliser with a linear branch
// (LoLCATs: (g num + lin_num) / (g den + lin_den)). Query n sees keys n - window < j <= n.
// Computed in query blocks of `block` rows against the keys that block can see (O(T (block + window))
// memory): block = T is the full masked matrix, block = 1 the per-token decode. Every exponent is s - c_n
// <= 0 with c_n the row max over the window, as in LoLCATs. Grouped query heads are folded into the rows of
// their kv head's block (no repeated keys).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace linearize::kernels {

struct WindowSoftmaxParts {
  at::Tensor numerator;    // [B, T, H, V]: sum_j exp(s_nj - c_n) v_j, fp32
  at::Tensor denominator;  // [B, T, H]: sum_j exp(s_nj - c_n), >= 1, fp32
};

// q: [B, T, H, D] at positions query_start..; k: [B, S, Hkv, D], v: [B, S, Hkv, V] at positions
// key_start.. and ending with the queries (key_start + S == query_start + T). H a multiple of Hkv.
// scale: multiplies q.k (pass 1/sqrt(D) for standard attention). key_valid: a padded batch's [B, S] bool
// (false: padding), as kernels/softmax_attention.h's without_padded_keys treats it. Differentiable.
WindowSoftmaxParts window_softmax_parts(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::int64_t query_start, std::int64_t key_start, std::int64_t window,
                                        double scale, std::int64_t block, const at::Tensor& key_valid = {});

}  // namespace linearize::kernels
