#include "kernels/chunk_layout.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

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

int64_t ChunkLayout::count_or_rest(int64_t first, int64_t count) const {
  TORCH_CHECK(first >= 0 && first < chunks_ && count <= chunks_ - first, "chunks [", first, ", +", count,
              ") out of ", chunks_);
  return count < 0 ? chunks_ - first : count;
}

at::Tensor ChunkLayout::pad_tokens(const at::Tensor& x, int64_t first, int64_t count) const {
  const int64_t start = first * chunk_, length = std::min(tokens_ - start, count * chunk_);
  const at::Tensor window = x.narrow(1, start, length);
  const int64_t pad = count * chunk_ - length;
  if (pad == 0) return window;
  std::vector<int64_t> widths(2 * (x.dim() - 1), 0);  // pairs from the last dim back to dim 1 (tokens)
  widths.back() = pad;
  return at::constant_pad_nd(window, widths, 0);
}

at::Tensor ChunkLayout::queries(const at::Tensor& q, int64_t first, int64_t count, double scale) const {
  const int64_t n = count_or_rest(first, count), d = q.size(-1);
  const at::Tensor chunks = pad_tokens(q, first, n).view({batch_, n, chunk_, kv_heads_, group_, d}).permute({0, 3, 1, 4, 2, 5});
  // clone, not contiguous(): a view that is contiguous already would be the caller's tensor, scaled in place.
  const at::Tensor copy = scale == 1 ? chunks.contiguous() : chunks.clone(at::MemoryFormat::Contiguous).mul_(scale);
  return copy.view({batch_, kv_heads_, n, group_ * chunk_, d});
}

at::Tensor ChunkLayout::keys(const at::Tensor& x, int64_t first, int64_t count) const {
  const int64_t n = count_or_rest(first, count), d = x.size(-1);
  return pad_tokens(x, first, n).view({batch_, n, chunk_, kv_heads_, d}).permute({0, 3, 1, 2, 4}).contiguous();
}

at::Tensor ChunkLayout::scalars(const at::Tensor& x, int64_t first, int64_t count) const {
  const int64_t n = count_or_rest(first, count);
  return pad_tokens(x, first, n).view({batch_, n, chunk_, kv_heads_}).permute({0, 3, 1, 2}).contiguous();
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

bool records_grad(const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return false;
  return std::any_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) { return t.defined() && t.requires_grad(); });
}

at::Tensor causal_mask(int64_t size, const at::Tensor& like) {
  return at::ones({size, size}, like.options().dtype(at::kBool)).tril();
}

}  // namespace linearize::kernels::detail
