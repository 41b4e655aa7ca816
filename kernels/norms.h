// Normalisation layers as functions on tensors. On the CPU without autograd each runs as one fused loop per
// row (the same arithmetic and roundings as the ATen form it replaces; a decode step calls them ~2 per
// layer, where the ATen form dispatched ~10 ops each).
#pragma once

#include <ATen/ATen.h>

namespace linearize::kernels {

// RMSNorm (Zhang & Sennrich 2019, eq. 4): w * x / sqrt(mean(x^2) + eps). The statistics are taken in fp32
// and the result cast back before the weight multiplies it, as transformers' LlamaRMSNorm does, so bf16
// models round exactly where the reference rounds.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// OLMo 2's RMSNorm (T5-style): w * x / sqrt(mean(x^2) + eps), the product taken in fp32 before the cast back
// (transformers' Olmo2RMSNorm).
at::Tensor rms_norm_weight_in_fp32(const at::Tensor& x, const at::Tensor& weight, double eps);

// Gemma's RMSNorm: (1 + w) * x / sqrt(mean(x^2) + eps), the product taken in fp32 before the cast back
// (transformers' Gemma3RMSNorm), so the zero-centred weight w keeps its precision in bf16 models.
at::Tensor rms_norm_one_plus(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace linearize::kernels
