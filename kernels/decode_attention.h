// Decode's attention: one query per sequence and head against the keys a cache holds. On the CPU without
// autograd it runs as two fused loops (scores with their row max; then the weighted values) around one
// vectorised exp, each key and value row read once for the G query heads that share it, bf16 / fp16 caches
// widened on the fly with fp32 accumulation. It replaces at::scaled_dot_product_attention for one query:
// there the bf16 path calls an M = 1 GEMM per head and block (MKL's generic bf16 GEMV on AMD CPUs), and the
// fp32 path and the window hybrids' ATen form dispatch ~15 ops per layer and token for little arithmetic
// (decode speed: scripts/bench.sh decoder).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace linearize::kernels {

struct DecodeAttentionParts {
  at::Tensor numerator;    // [B, H, V]: sum_j exp(s_j - c) v_j, c = max_j s_j (fp32; fp64 for fp64 inputs)
  at::Tensor denominator;  // [B, H]:    sum_j exp(s_j - c) >= 1
  at::Tensor row_max;      // [B, H]:    c (a term exp(s - c) joining the denominator: gpt-oss's sinks)
};

// Whether decode_attention_parts takes these inputs: CPU, no gradient wanted, k and v of one dtype (fp32,
// bf16, fp16, or fp64 with an fp64 q), the last dimension of each contiguous.
bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// q [B, H, D] (one token); k [B, Hkv, S, D], v [B, Hkv, S, V], any strides but the last (a cache's view),
// H a multiple of Hkv (query head h reads kv head h / (H / Hkv)). Every key is visible; s_j = scale q.k_j.
DecodeAttentionParts decode_attention_parts(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

}  // namespace linearize::kernels
