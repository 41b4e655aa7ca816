#include "kernels/softmax_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include <torch/version.h>

#include "kernels/decode_attention.h"

namespace linearize::kernels {
namespace {
#if !(TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))

// SDPA learnt grouped-query heads (enable_gqa) in LibTorch 2.5; before that the kv heads are repeated.
at::Tensor repeat_kv(const at::Tensor& x, std::int64_t groups) {
  if (groups == 1) return x;
  const auto s = x.sizes();
  return x.unsqueeze(2).expand({s[0], s[1], groups, s[2], s[3]}).reshape({s[0], s[1] * groups, s[2], s[3]});
}

#endif

at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask,
                bool is_causal, double scale) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  return at::scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale, /*enable_gqa=*/q.size(1) != k.size(1));
#else
  const auto groups = q.size(1) / k.size(1);
  return at::scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, 0.0, is_causal, scale);
#endif
}

// Prefill and chunks with sinks (gpt-oss), exactly: exp(sink_h) joins each row's denominator and nothing its numerator,
// as the sink column transformers' eager_attention_forward concatenates. SDPA with a zero key and value put before the
// keys and a float mask whose first column is the query head's sink logit (q.0 scale + sink_h = sink_h). That mask is
// per head, so queries go in blocks of about 16M mask elements (64 MB in fp32) each against the keys it can see: a
// sliding layer's block reads its window, never the whole context.
at::Tensor attention_with_sinks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const SoftmaxAttentionOptions& options,
                                double scale) {
  const std::int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2);
  const auto slot = [](const at::Tensor& t) {
    auto sizes = t.sizes().vec();
    sizes[2] = 1;
    return at::zeros(sizes, t.options());
  };
  const auto zero_key = slot(k), zero_value = slot(v);
  // Keys [from, from + count) after the zero slot: a copy of the window for a block that starts past key 0, else views
  // of one copy of every key that the blocks share (full layers; a sliding layer's first blocks).
  std::optional<std::pair<at::Tensor, at::Tensor>> all;
  const auto slotted = [&](std::int64_t from, std::int64_t count) -> std::pair<at::Tensor, at::Tensor> {
    if (from > 0) return {at::cat({zero_key, k.narrow(2, from, count)}, 2), at::cat({zero_value, v.narrow(2, from, count)}, 2)};
    if (!all) all.emplace(at::cat({zero_key, k}, 2), at::cat({zero_value, v}, 2));
    return {all->first.narrow(2, 0, count + 1), all->second.narrow(2, 0, count + 1)};
  };
  const auto sinks = options.sinks.to(q.scalar_type()).view({1, H, 1, 1});
  // Rows per block for a mask of at most `cells` = 16M / (B H) rows x columns: n (n + W) <= cells with a window W
  // (its block sees at most W - 1 + n keys and the slot), n (S + 1) <= cells without.
  const double cells = double(std::int64_t{1} << 24) / double(B * H);
  const std::int64_t rows = std::max<std::int64_t>(
      1, options.window && *options.window < S
             ? static_cast<std::int64_t>((std::sqrt(double(*options.window) * double(*options.window) + 4 * cells) - double(*options.window)) / 2)
             : static_cast<std::int64_t>(cells / double(S + 1)));
  std::vector<at::Tensor> blocks;
  for (std::int64_t first = 0; first < T; first += rows) {
    const auto n = std::min(rows, T - first);
    // The keys this block's queries can see: from the first one's window on, up to the last one.
    const std::int64_t first_position = options.query_start + first;
    const std::int64_t begin = options.window ? std::max<std::int64_t>(0, first_position - *options.window + 1 - options.key_start) : 0;
    const std::int64_t end = std::min(S, first_position + n - options.key_start);
    auto block = options;
    block.query_start = first_position;
    block.key_start = options.key_start + begin;
    if (options.key_valid.defined()) block.key_valid = options.key_valid.narrow(1, begin, end - begin);
    auto visible = causal_window_mask(n, end - begin, block, q.device());  // [n, keys] or [B, 1, n, keys]
    if (visible.dim() == 2) visible = visible.view({1, 1, n, end - begin});
    const auto batch = visible.size(0);
    const auto hidden = at::zeros({batch, 1, n, end - begin}, q.options())
                            .masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity())
                            .expand({batch, H, n, end - begin});
    const auto [keys, values] = slotted(begin, end - begin);
    blocks.push_back(sdpa(q.narrow(2, first, n), keys, values, at::cat({sinks.expand({batch, H, n, 1}), hidden}, -1), false, scale));
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
  TORCH_CHECK(!options.sinks.defined() || (options.sinks.dim() == 1 && options.sinks.size(0) == q.size(1)),
              "softmax_attention: sinks must be [", q.size(1), "]");
  // One new token whose keys end with it (decode): the visible keys are a suffix, the fused decode loop's.
  const bool padded = options.key_valid.defined();
  if (!padded && T == 1 && options.key_start + S == options.query_start + 1 && decode_attention_applies(q.select(2, 0), k, v)) {
    const std::int64_t first = options.window ? std::max<std::int64_t>(0, S - *options.window) : 0;
    const auto parts = decode_attention_parts(q.select(2, 0), k.narrow(2, first, S - first), v.narrow(2, first, S - first), scale);
    auto denominator = parts.denominator;
    // A sink's exp(sink_h - c), relative to the row max c as the parts are.
    if (options.sinks.defined())
      denominator = denominator + (options.sinks.to(parts.row_max.scalar_type()).view({1, -1}) - parts.row_max).exp();
    return (parts.numerator / denominator.unsqueeze(-1)).to(q.scalar_type()).unsqueeze(2);
  }
  if (options.sinks.defined()) return attention_with_sinks(q, k, v, options, scale);
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
