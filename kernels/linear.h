// y = x W^T + b, the decoder's projections and LM head. Decode multiplies one row per sequence by each
// matrix, which is memory-bound: with bf16 / fp16 weights on the CPU (no autograd) a few rows go through a
// matrix-vector loop that streams the 2-byte weights once and accumulates in fp32. Through oneDNN's bf16
// GEMM such shapes streamed 9-31 GB/s, so bf16 weights decoded only 1.4-1.7x as fast as fp32 ones where
// half the bytes allow 2x (llama-100m on a 2-core EPYC; with this loop 2.06x). On a 2-core Xeon the loop
// streams 28 GB/s on two threads, as MKL's fp32 GEMV (kernels bench, BM_DecodeProjection), and llama-100m
// decodes 1.56-1.65x as fast in bf16 as in fp32; fp16 weights, widened by integer steps that vectorise
// (GCC's _Float16 vectors convert lane by lane), 16 -> 47 tokens/s there. Everything else is at::linear.
#pragma once

#include <ATen/core/Tensor.h>

namespace linearize::kernels {

// x [..., in], w [out, in], b [out] or undefined -> [..., out] in x's dtype.
at::Tensor linear_projection(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// The rows of x up to which linear_projection() takes the matrix-vector loop.
inline constexpr int64_t kMatVecMaxRows = 4;

}  // namespace linearize::kernels
