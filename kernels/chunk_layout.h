// Shared machinery of the chunked mixers (internal to kernels/): the move between fla's sequence-first
// layout and head-first chunks, grouped query heads folded into the rows of a chunk (so k, v and the
// state are never repeated), and the split of the chunk axis into slabs that bound temporaries.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace linearize::kernels::detail {

// fp64 if any defined input is fp64, else fp32 (bf16/fp16 inputs are computed in fp32).
at::ScalarType compute_dtype(const std::vector<at::Tensor>& tensors);

// Sequence [B, T, H*, D] split into N = ceil(T / C) chunks of C tokens (zero padded at the end: zero keys
// add nothing to a state, zero log gates decay nothing).
class ChunkLayout {
 public:
  ChunkLayout(int64_t batch, int64_t tokens, int64_t kv_heads, int64_t group, int64_t chunk);

  int64_t chunks() const { return chunks_; }
  int64_t chunk() const { return chunk_; }
  int64_t group() const { return group_; }

  // The layouts below are contiguous copies.
  // q [B,T,Hkv*G,D] -> [B, Hkv, N, G*C, D]: row g*C + i is query head g of the group at token i.
  // `first` and `count` pick the chunks [first, first + count) only (count < 0: to the end), so that a
  // caller can work through slabs of chunks without a full-size copy of the sequence. `scale` multiplies
  // the copy while it is in cache (instead of a full-size pass over q beforehand).
  at::Tensor queries(const at::Tensor& q, int64_t first = 0, int64_t count = -1, double scale = 1) const;
  // k or v [B,T,Hkv,D] -> [B, Hkv, N, C, D].
  at::Tensor keys(const at::Tensor& x, int64_t first = 0, int64_t count = -1) const;
  // A per-head scalar [B,T,Hkv] -> [B, Hkv, N, C].
  at::Tensor scalars(const at::Tensor& x, int64_t first = 0, int64_t count = -1) const;
  // The inverse of queries() over all N chunks: [B, Hkv, N, G*C, D] -> [B, T, Hkv*G, D].
  at::Tensor merge_queries(const at::Tensor& o) const;

 private:
  // The tokens of chunks [first, first + count), zero padded to count * C: [B, count * C, ...].
  at::Tensor pad_tokens(const at::Tensor& x, int64_t first, int64_t count) const;
  int64_t count_or_rest(int64_t first, int64_t count) const;
  int64_t batch_, tokens_, kv_heads_, group_, chunk_, chunks_;
};

// Chunks per slab so that a slab's largest temporary holds about `budget` elements (at least 1 chunk).
int64_t chunks_per_slab(int64_t elements_per_chunk, int64_t chunks, int64_t budget = int64_t{1} << 21);

// Whether autograd records a graph through these inputs (grad mode on and one of the defined ones
// requires grad): the chunked mixers take in-place and fused paths only when it does not.
bool records_grad(const std::vector<at::Tensor>& inputs);

// [C, C] lower-triangular (diagonal included) boolean mask on x's device.
at::Tensor causal_mask(int64_t size, const at::Tensor& like);

}  // namespace linearize::kernels::detail
