// A family's RMSNorm (architecture.h NormStyle) on tensors: the kernel of its style.
#pragma once

#include <ATen/ATen.h>

#include "converter/architectures/architecture.h"
#include "kernels/norms.h"

namespace linearize {

inline at::Tensor rms_norm(NormStyle style, const at::Tensor& x, const at::Tensor& weight, double eps) {
  switch (style) {
    case NormStyle::Weight: return kernels::rms_norm(x, weight, eps);
    case NormStyle::WeightInFp32: return kernels::rms_norm_weight_in_fp32(x, weight, eps);
    case NormStyle::OnePlusWeight: break;
  }
  return kernels::rms_norm_one_plus(x, weight, eps);
}

}  // namespace linearize
