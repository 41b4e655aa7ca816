#include "kernels/window_attention.h"

#include <algorithm>
#include <limits>

namespace linearize::kernels {

WindowSoftmaxParts window_softmax_parts(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        std::int64_t query_start, std::int64_t key_start, std::int64_t window,
                                        double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "window_softmax_parts: q, k, v must be [B, T, H, D]");
  const std::int64_t T = q.size(1), S = k.size(1), H = q.size(2), groups = H / k.size(2);
  TORCH_CHECK(key_start + S == query_start + T, "window_softmax_parts: the keys must end with the queries");
  TORCH_CHECK(key_start <= query_start && window >= 1, "window_softmax_parts: bad window or positions");
  const auto compute = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // [B, H, T, D] with kv heads repeated per block slice below (blocks are small: window x 2 window).
  const auto qh = q.to(compute).transpose(1, 2);
  const auto kh = k.to(compute).transpose(1, 2), vh = v.to(compute).transpose(1, 2);

  const std::int64_t block = window;
  std::vector<at::Tensor> numerators, denominators;
  for (std::int64_t t0 = 0; t0 < T; t0 += block) {
    const std::int64_t t1 = std::min(T, t0 + block);
    const std::int64_t first_key = std::max(key_start, query_start + t0 - window + 1);  // positions
    const std::int64_t last_key = query_start + t1 - 1;
    const std::int64_t s0 = first_key - key_start, len = last_key - first_key + 1;
    auto kb = kh.narrow(2, s0, len), vb = vh.narrow(2, s0, len);
    if (groups > 1) {
      kb = kb.repeat_interleave(groups, 1);
      vb = vb.repeat_interleave(groups, 1);
    }
    const auto qb = qh.narrow(2, t0, t1 - t0);
    auto scores = at::matmul(qb, kb.transpose(-1, -2)) * scale;  // [B, H, bt, len]
    const auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    const auto qpos = at::arange(query_start + t0, query_start + t1, opts).unsqueeze(1);
    const auto kpos = at::arange(first_key, last_key + 1, opts).unsqueeze(0);
    const auto visible = kpos.le(qpos).logical_and(kpos.gt(qpos - window));
    scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
    const auto row_max = std::get<0>(scores.max(-1, /*keepdim=*/true));  // c_n, as LoLCATs computes it
    const auto weights = (scores - row_max).exp();  // exp(-inf) = 0 outside the window
    numerators.push_back(at::matmul(weights, vb));
    denominators.push_back(weights.sum(-1));
  }
  return {at::cat(numerators, 2).transpose(1, 2), at::cat(denominators, 2).transpose(1, 2)};
}

}  // namespace linearize::kernels
