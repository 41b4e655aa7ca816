#include "kernels/short_conv.h"

#include <ATen/ATen.h>

#include <vector>

namespace linearize::kernels {

ShortConvOutput short_conv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& state) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && weight.size(0) == x.size(2),
              "short_conv: x must be [B,T,C] and weight [C,K], got ", x.sizes(), " and ", weight.sizes());
  const int64_t B = x.size(0), C = x.size(2), K = weight.size(1);
  const auto past = state.defined() ? state.to(x.scalar_type()) : at::zeros({B, K - 1, C}, x.options());
  TORCH_CHECK(past.sizes() == at::IntArrayRef({B, K - 1, C}), "short_conv: state must be [B,K-1,C], got ", past.sizes());
  const auto padded = at::cat({past, x}, 1);  // [B, K-1+T, C]
  // conv1d with groups = C is the depthwise convolution; its kernel is [C, 1, K].
  const std::vector<int64_t> stride{1}, padding{0}, dilation{1};
  const at::Tensor y = at::conv1d(padded.transpose(1, 2), weight.to(x.scalar_type()).unsqueeze(1),
                                  bias.defined() ? bias.to(x.scalar_type()) : at::Tensor(), stride, padding, dilation, C);
  return {at::silu(y).transpose(1, 2), padded.narrow(1, padded.size(1) - (K - 1), K - 1)};
}

}  // namespace linearize::kernels
