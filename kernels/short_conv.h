// The short causal depthwise convolution of Mamba / Mamba-2 (Gu & Dao 2023, section 3.4; Dao & Gu 2024) over
// x [B, T, C]: y_t = silu(b + sum_{i<K} w_i * x_{t-K+1+i}), each channel alone, K taps (4 in Mamba). The
// state is the last K-1 inputs, so a call continuing from it equals one call over the whole sequence; no
// state means zeros before the first token. One computation serves prefill, training and decode (a
// convolution is not a recurrence: there is nothing to chunk). Arithmetic in x's dtype; differentiable.
#pragma once

#include <ATen/core/Tensor.h>

namespace linearize::kernels {

struct ShortConvOutput {
  at::Tensor y;      // [B, T, C]
  at::Tensor state;  // [B, K-1, C]: the last K-1 inputs seen (zeros where fewer were)
};

// weight [C, K], bias [C] (undefined: none); state [B, K-1, C] or undefined (zeros).
ShortConvOutput short_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& state);

}  // namespace linearize::kernels
