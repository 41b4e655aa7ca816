#include "kernels/window_attention.h"

#include "kernels/decode_attention.h"
#include "kernels/softmax_attention.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace linearize::kernels {

WindowSoftmaxParts window_softmax_parts(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::int64_t query_start, std::int64_t key_start, std::int64_t window,
                                        double scale, std::int64_t block, const at::Tensor& key_valid) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "window_softmax_parts: q, k, v must be [B, T, H, D]");
  const std::int64_t B = q.size(0), T = q.size(1), S = k.size(1), H = q.size(2), Hkv = k.size(2);
  TORCH_CHECK(Hkv >= 1 && H % Hkv == 0 && v.size(2) == Hkv, "window_softmax_parts: query heads must be a multiple of kv heads");
  TORCH_CHECK(key_start + S == query_start + T, "window_softmax_parts: the keys must end with the queries");
  TORCH_CHECK(key_start <= query_start && window >= 1 && block >= 1, "window_softmax_parts: bad window, block or positions");
  const std::int64_t G = H / Hkv, D = q.size(3), V = v.size(3);
  const auto compute = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto qh = q.to(compute).view({B, T, Hkv, G, D}).permute({0, 2, 3, 1, 4});  // [B, Hkv, G, T, D]
  const auto kh = k.transpose(1, 2), vh = v.transpose(1, 2);  // [B, Hkv, S, *], cast per block below
  const auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());

  std::vector<at::Tensor> numerators, denominators;
  for (std::int64_t t0 = 0; t0 < T; t0 += block) {
    const std::int64_t t1 = std::min(T, t0 + block), bt = t1 - t0;
    const std::int64_t first_key = std::max(key_start, query_start + t0 - window + 1);  // positions
    const std::int64_t last_key = query_start + t1 - 1;
    const std::int64_t s0 = first_key - key_start, len = last_key - first_key + 1;
    const bool padded = key_valid.defined();
    if (bt == 1 && !padded && decode_attention_applies(q.select(1, t0), kh, vh)) {  // decode: the fused loop, every key visible
      const auto parts = decode_attention_parts(q.select(1, t0), kh.narrow(2, s0, len), vh.narrow(2, s0, len), scale);
      numerators.push_back(parts.numerator.view({B, Hkv, G, 1, V}));
      denominators.push_back(parts.denominator.view({B, Hkv, G, 1}));
      continue;
    }
    const auto kb = kh.narrow(2, s0, len).to(compute), vb = vh.narrow(2, s0, len).to(compute);
    // The G query heads of a kv head as G * bt rows against that kv head's keys.
    const auto qb = qh.narrow(3, t0, bt).reshape({B, Hkv, G * bt, D});
    auto scores = (at::matmul(qb, kb.transpose(-1, -2)) * scale).view({B, Hkv, G, bt, len});
    if (bt > 1 || padded) {  // one query (decode) sees every key of its range: no mask to build
      const auto qpos = at::arange(query_start + t0, query_start + t1, opts).unsqueeze(1);
      const auto kpos = at::arange(first_key, last_key + 1, opts).unsqueeze(0);
      auto visible = kpos.le(qpos).logical_and(kpos.gt(qpos - window));
      if (padded) visible = without_padded_keys(visible, qpos, kpos, key_valid.narrow(1, s0, len)).unsqueeze(1);  // [B, 1, 1, bt, len]
      scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
    }
    const auto row_max = std::get<0>(scores.max(-1, /*keepdim=*/true));  // c_n, as LoLCATs computes it
    const auto weights = (scores - row_max).exp();  // exp(-inf) = 0 outside the window
    numerators.push_back(at::matmul(weights.view({B, Hkv, G * bt, len}), vb).view({B, Hkv, G, bt, V}));
    denominators.push_back(weights.sum(-1));
  }
  // [B, Hkv, G, T, *] -> [B, T, H, *]
  const auto joined = [](const std::vector<at::Tensor>& parts) { return parts.size() == 1 ? parts.front() : at::cat(parts, 3); };
  return {joined(numerators).permute({0, 3, 1, 2, 4}).reshape({B, T, H, V}), joined(denominators).permute({0, 3, 1, 2}).reshape({B, T, H})};
}

}  // namespace linearize::kernels
