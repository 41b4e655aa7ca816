#include "kernels/norms.h"

namespace linearize::kernels {
namespace {

// x / sqrt(mean(x^2) + eps) in fp32 (fp64 for fp64 x, so verify's fp64 layers stay fp64).
at::Tensor normalised(const at::Tensor& x, double eps) {
  const auto wide = x.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  return wide * at::rsqrt(wide.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return weight * normalised(x, eps).to(x.scalar_type());
}

at::Tensor rms_norm_one_plus(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto y = normalised(x, eps);
  return (y * (1.0 + weight.to(y.scalar_type()))).to(x.scalar_type());
}

}  // namespace linearize::kernels
