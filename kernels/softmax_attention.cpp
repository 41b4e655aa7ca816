#include "kernels/softmax_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <torch/version.h>

#include "kernels/decode_attention.h"

namespace linearize::kernels {
#if !(TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))
namespace {

// SDPA learnt grouped-query heads (enable_gqa) in LibTorch 2.5; before that the kv heads are repeated.
at::Tensor repeat_kv(const at::Tensor& x, std::int64_t groups) {
  if (groups == 1) return x;
  const auto s = x.sizes();
  return x.unsqueeze(2).expand({s[0], s[1], groups, s[2], s[3]}).reshape({s[0], s[1] * groups, s[2], s[3]});
}

}  // namespace
#endif
namespace {

at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask,
                bool is_causal, double scale) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  return at::scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale, /*enable_gqa=*/q.size(1) != k.size(1));
#else
  const auto groups = q.size(1) / k.size(1);
  return at::scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, 0.0, is_causal, scale);
#endif
}

// Attention with sinks through SDPA's own kernels, exactly: a zero key and value appended to every kv head, and a float
// mask whose last column is the query head's sink logit (q.0 scale + sink_h = sink_h), so exp(sink_h) joins each row's
// denominator and nothing its numerator, as the sink column transformers' eager_attention_forward concatenates. The
// mask is per head ([B|1, H, rows, S + 1]), so queries go in blocks that keep it near 16M elements (64 MB in fp32)
// whatever the context.
at::Tensor attention_with_sinks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const SoftmaxAttentionOptions& options,
                                double scale) {
  const std::int64_t H = q.size(1), T = q.size(2), S = k.size(2);
  TORCH_CHECK(options.sinks.dim() == 1 && options.sinks.size(0) == H, "softmax_attention: sinks must be [", H, "]");
  auto zero_slot = [](const at::Tensor& t) {
    auto sizes = t.sizes().vec();
    sizes[2] = 1;
    return at::cat({t, at::zeros(sizes, t.options())}, 2);
  };
  const auto keys = zero_slot(k), values = zero_slot(v);
  const auto sinks = options.sinks.to(q.scalar_type()).view({1, H, 1, 1});
  const std::int64_t rows = std::max<std::int64_t>(1, (std::int64_t{1} << 24) / (H * (S + 1)));
  std::vector<at::Tensor> blocks;
  for (std::int64_t first = 0; first < T; first += rows) {
    const auto n = std::min(rows, T - first);
    auto block = options;
    block.query_start = options.query_start + first;
    auto visible = causal_window_mask(n, S, block, q.device());  // [n, S] or [B, 1, n, S]
    if (visible.dim() == 2) visible = visible.view({1, 1, n, S});
    const auto batch = visible.size(0);
    const auto scores = at::zeros({batch, 1, n, S}, q.options())
                            .masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity())
                            .expand({batch, H, n, S});
    const auto mask = at::cat({scores, sinks.expand({batch, H, n, 1})}, -1);
    blocks.push_back(sdpa(q.narrow(2, first, n), keys, values, mask, false, scale));
  }
  return blocks.size() == 1 ? blocks.front() : at::cat(blocks, 2);
}

}  // namespace

at::Tensor causal_window_mask(std::int64_t queries, std::int64_t keys, const SoftmaxAttentionOptions& options,
                              const at::Device& device) {
  const auto idx = at::TensorOptions().dtype(at::kLong).device(device);
  const auto qpos = at::arange(options.query_start, options.query_start + queries, idx).unsqueeze(1);
  const auto kpos = at::arange(options.key_start, options.key_start + keys, idx).unsqueeze(0);
  auto mask = kpos.le(qpos);
  if (options.window) mask = mask.logical_and(kpos.gt(qpos - *options.window));
  return options.key_valid.defined() ? without_padded_keys(mask, qpos, kpos, options.key_valid) : mask;
}

at::Tensor without_padded_keys(const at::Tensor& visible, const at::Tensor& query_positions, const at::Tensor& key_positions,
                               const at::Tensor& key_valid) {
  TORCH_CHECK(key_valid.dim() == 2 && key_valid.size(1) == key_positions.size(-1), "key_valid must be [B, S]");
  const auto valid = key_valid.to(at::kBool).view({key_valid.size(0), 1, 1, key_valid.size(1)});
  return visible.logical_and(valid).logical_or(key_positions.eq(query_positions));
}

at::Tensor zero_padded_tokens(const at::Tensor& x, const at::Tensor& token_valid) {
  if (!token_valid.defined()) return x;
  std::vector<std::int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[0] = x.size(0), shape[1] = x.size(1);
  return at::where(token_valid.narrow(1, 0, x.size(1)).to(at::kBool).view(shape), x, at::zeros({}, x.options()));
}

at::Tensor softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const SoftmaxAttentionOptions& options) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "softmax_attention: q, k, v must be [B, H, T, D]");
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "softmax_attention: ", q.size(1), " query heads for ", k.size(1), " kv heads");
  const std::int64_t T = q.size(2), S = k.size(2);
  const double scale = options.scale > 0 ? options.scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  // One new token whose keys end with it (decode): the visible keys are a suffix, the fused decode loop's.
  if (options.sinks.defined()) return attention_with_sinks(q, k, v, options, scale);
  const bool padded = options.key_valid.defined();
  if (!padded && T == 1 && options.key_start + S == options.query_start + 1 && decode_attention_applies(q.select(2, 0), k, v)) {
    const std::int64_t first = options.window ? std::max<std::int64_t>(0, S - *options.window) : 0;
    const auto parts = decode_attention_parts(q.select(2, 0), k.narrow(2, first, S - first), v.narrow(2, first, S - first), scale);
    return (parts.numerator / parts.denominator.unsqueeze(-1)).to(q.scalar_type()).unsqueeze(2);
  }
  // Plain causal (queries and keys aligned from position 0, no window) lets SDPA pick its fused kernels;
  // note that SDPA's is_causal aligns the mask top-left, which is right only when T == S.
  const bool plain_causal = !padded && !options.window && T == S && options.query_start == options.key_start;
  // One new token that sees every cached key (decode without a window) needs no mask at all.
  const bool sees_all = !padded && T == 1 && !options.window && options.key_start + S == options.query_start + 1;
  std::optional<at::Tensor> mask;
  if (!plain_causal && !sees_all) mask = causal_window_mask(T, S, options, q.device());
  return sdpa(q, k, v, mask, plain_causal, scale);
}

}  // namespace linearize::kernels
