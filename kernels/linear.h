// y = x W^T + b, the decoder's projections and LM head. Decode multiplies one row per sequence by each
// matrix, which is memory-bound: with bf16 / fp16 weights on the CPU (no autograd) a few rows go through a
// matrix-vector loop that streams the 2-byte weights once and accumulates in fp32, at about the rate MKL's
// fp32 GEMV streams fp32 weights (oneDNN's bf16 GEMM streams such shapes more slowly), so halving the
// weights' bytes speeds decode up. fp16 weights are widened by integer steps that vectorise (GCC's
// _Float16 vectors convert lane by lane). The loop against MKL's fp32 GEMV and oneDNN's bf16 GEMM:
// scripts/bench.sh kernels (BM_DecodeProjection); the bf16/fp32 decode ratio: scripts/bench.sh decoder.
// Everything else is at::linear.
#pragma once

#include <ATen/core/Tensor.h>

namespace linearize::kernels {

// x [..., in], w [out, in], b [out] or undefined -> [..., out] in x's dtype.
at::Tensor linear_projection(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// The rows of x up to which linear_projection() takes the matrix-vector loop.
inline constexpr int64_t kMatVecMaxRows = 4;

}  // namespace linearize::kernels
