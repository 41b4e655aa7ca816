#include "kernels/chunk_layout.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace linearize::kernels::detail {

at::ScalarType compute_dtype(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    if (t.defined() && t.scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

ChunkLayout::ChunkLayout(int64_t batch, int64_t tokens, int64_t kv_heads, int64_t group, int64_t chunk)
    : batch_(batch), tokens_(tokens), kv_heads_(kv_heads), group_(group), chunk_(chunk),
      chunks_((tokens + chunk - 1) / chunk) {
  TORCH_CHECK(chunk >= 1, "chunk size must be >= 1, got ", chunk);
}

at::Tensor ChunkLayout::pad_tokens(const at::Tensor& x) const {
  const int64_t pad = chunks_ * chunk_ - tokens_;
  if (pad == 0) return x;
  std::vector<int64_t> widths(2 * (x.dim() - 1), 0);  // pairs from the last dim back to dim 1 (tokens)
  widths.back() = pad;
  return at::constant_pad_nd(x, widths, 0);
}

at::Tensor ChunkLayout::queries(const at::Tensor& q) const {
  const int64_t d = q.size(-1);
  return pad_tokens(q)
      .view({batch_, chunks_, chunk_, kv_heads_, group_, d})
      .permute({0, 3, 1, 4, 2, 5})
      .reshape({batch_, kv_heads_, chunks_, group_ * chunk_, d});
}

at::Tensor ChunkLayout::keys(const at::Tensor& x) const {
  const int64_t d = x.size(-1);
  return pad_tokens(x).view({batch_, chunks_, chunk_, kv_heads_, d}).permute({0, 3, 1, 2, 4}).contiguous();
}

at::Tensor ChunkLayout::scalars(const at::Tensor& x) const {
  return pad_tokens(x).view({batch_, chunks_, chunk_, kv_heads_}).permute({0, 3, 1, 2}).contiguous();
}

at::Tensor ChunkLayout::merge_queries(const at::Tensor& o) const {
  const int64_t d = o.size(-1);
  return o.view({batch_, kv_heads_, chunks_, group_, chunk_, d})
      .permute({0, 2, 4, 1, 3, 5})
      .reshape({batch_, chunks_ * chunk_, kv_heads_ * group_, d})
      .narrow(1, 0, tokens_);
}

int64_t chunks_per_slab(int64_t elements_per_chunk, int64_t chunks, int64_t budget) {
  return std::clamp<int64_t>(budget / std::max<int64_t>(elements_per_chunk, 1), 1, std::max<int64_t>(chunks, 1));
}

at::Tensor causal_mask(int64_t size, const at::Tensor& like) {
  return at::ones({size, size}, like.options().dtype(at::kBool)).tril();
}

}  // namespace linearize::kernels::detail
