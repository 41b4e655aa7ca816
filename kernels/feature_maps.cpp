#include "kernels/feature_maps.h"

#include <ATen/ATen.h>

namespace linearize::kernels {
namespace {

// x [B,T,H,d] times a per-head weight [H,d,f] (+ bias [H,f]) -> [B,T,H,f].
at::Tensor per_head_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4, "feature map: x must be [B,T,H,d], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == x.size(2) && weight.size(1) == x.size(3),
              "feature map: weight must be [H,d,f] with H=", x.size(2), ", d=", x.size(3), ", got ",
              weight.sizes());
  // [H, B*T, d] x [H, d, f]: one batched GEMM over heads.
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), d = x.size(3), f = weight.size(2);
  at::Tensor y = at::matmul(x.reshape({B * T, H, d}).transpose(0, 1), weight).transpose(0, 1).view({B, T, H, f});
  if (bias.defined()) {
    TORCH_CHECK(bias.sizes() == at::IntArrayRef({H, f}), "feature map: bias must be [H,f], got ", bias.sizes());
    y = y + bias;
  }
  return y;
}

}  // namespace

at::Tensor softmax_d(const at::Tensor& x) { return at::softmax(x, -1); }

at::Tensor hedgehog(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor y = per_head_linear(x, weight, bias);
  return at::cat({at::softmax(y, -1), at::softmax(-y, -1)}, -1);
}

at::Tensor truncated_identity(int64_t heads, int64_t dim, int64_t features, const at::TensorOptions& options) {
  TORCH_CHECK(features >= 1 && features <= dim, "truncated_identity: need 1 <= f <= d, got f=", features,
              ", d=", dim);
  return at::eye(dim, features, options).unsqueeze(0).repeat({heads, 1, 1});
}

}  // namespace linearize::kernels
