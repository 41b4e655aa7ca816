// Causal softmax attention (full or sliding-window) over a query block and a key block that may start
// earlier (a KV cache), with grouped-query heads. The reference every linear mixer is measured against.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/ATen.h>

namespace linearize::kernels {

struct SoftmaxAttentionOptions {
  double scale = 0;                    // 0: 1/sqrt(head_dim)
  std::int64_t query_start = 0;        // absolute position of the first query
  std::int64_t key_start = 0;          // absolute position of the first key (> 0 when a window cache was trimmed)
  std::optional<std::int64_t> window;  // key j is visible to query i iff i - window < j <= i (Mistral, Qwen2)
  // A padded batch: [B, S] bool, false for padding. No query sees a padded key; a padded query sees itself
  // alone (its row stays finite, so no NaN reaches a real row through a zero weight). Undefined: none.
  at::Tensor key_valid{};
  // gpt-oss's attention sinks: [H] logits, one per query head, each joining its head's softmax denominator
  // (p_ij = exp(s_ij) / (exp(sink_h) + sum_j' exp(s_ij'))). Undefined: none.
  at::Tensor sinks{};
};

// q: [B, H, T, D]; k, v: [B, Hkv, S, D] with H a multiple of Hkv (query head h reads kv head h / (H/Hkv)).
// Returns [B, H, T, D]. One query at the end of its keys on the CPU without autograd (decode) runs the
// fused decode loop (kernels/decode_attention.h); otherwise at::scaled_dot_product_attention: its fused
// CPU/CUDA kernels when the mask is plain causal, an explicit boolean mask otherwise (windows, offsets).
at::Tensor softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const SoftmaxAttentionOptions& options);

// The boolean [T, S] visibility mask softmax_attention applies (true = attend), for tests and verify;
// [B, 1, T, S] with options.key_valid.
at::Tensor causal_window_mask(std::int64_t queries, std::int64_t keys, const SoftmaxAttentionOptions& options,
                              const at::Device& device);

// `visible` ([..., T, S] for queries and keys at these positions) without the padded keys, each query
// seeing itself: [B, 1, T, S] (key_valid [B, S]). The one rule for padding in every window and softmax kernel.
at::Tensor without_padded_keys(const at::Tensor& visible, const at::Tensor& query_positions, const at::Tensor& key_positions,
                               const at::Tensor& key_valid);

// x [B, n, ...] with the rows of padded tokens 0 (token_valid [B, >= n] bool, its first n columns read); x itself
// when token_valid is undefined. What a padded token writes into a recurrent state goes through it.
at::Tensor zero_padded_tokens(const at::Tensor& x, const at::Tensor& token_valid);

}  // namespace linearize::kernels
