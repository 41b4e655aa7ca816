// Feature maps phi applied to queries and keys before a linear-attention mixer (docs/recipes.md):
// x is [B, T, H, d]; learned maps hold one weight per head, W [H, d, f], optional bias [H, f].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace linearize::kernels {

// softmax over the head dim (Liger's parameter-free map), output [B,T,H,d].
at::Tensor softmax_d(const at::Tensor& x);

// Hedgehog (LoLCATs): [softmax_f(xW + b), softmax_f(-(xW + b))], two separate softmaxes over f,
// output [B,T,H,2f].
at::Tensor hedgehog(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// Hedgehog's identity-like initial weight (LoLCATs --lk_zero_init): the first f columns of the d x d
// identity for every head, [H, d, f] (f <= d).
at::Tensor truncated_identity(int64_t heads, int64_t dim, int64_t features, const at::TensorOptions& options);

}  // namespace linearize::kernels
