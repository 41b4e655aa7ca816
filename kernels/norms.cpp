#include "kernels/norms.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "kernels/cpu_loops.h"

namespace linearize::kernels {
namespace {

// x / sqrt(mean(x^2) + eps) in fp32 (fp64 for fp64 x, so verify's fp64 layers stay fp64).
at::Tensor normalised(const at::Tensor& x, double eps) {
  const auto wide = x.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  return wide * at::rsqrt(wide.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

// The fused CPU form, one pass per row: the same arithmetic as the ATen form above in the same precision
// and the same roundings to x's dtype (the normalised row, then its product with w; or, one_plus, the
// product w n or (1 + w) n in fp32 rounded once), in one call instead of ~10 dispatched ops. T is the storage
// type (16-bit types as their bits), Acc fp32 (fp64 for fp64).
enum class Product { rounded_then_weight, weight_in_fp32, one_plus_in_fp32 };

template <typename T, typename Acc, bool kBf16, Product kProduct>
LINEARIZE_INLINE void rms_rows(const T* x, const T* w, T* y, int64_t n, Acc eps, int64_t begin, int64_t end) {
  constexpr bool kBits = std::is_same_v<T, std::uint16_t>;
  const auto store = [](Acc v) -> T {
    if constexpr (kBits) {
      return detail::narrow(v, kBf16);
    } else {
      return v;
    }
  };
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    Acc squares = 0;
    for (int64_t i = 0; i < n; ++i) {
      const Acc v = detail::load<Acc, T, kBf16>(xr, i);
      squares += v * v;
    }
    const Acc scale = Acc(1) / std::sqrt(squares / static_cast<Acc>(n) + eps);
    for (int64_t i = 0; i < n; ++i) {
      const Acc normal = detail::load<Acc, T, kBf16>(xr, i) * scale, weight = detail::load<Acc, T, kBf16>(w, i);
      if constexpr (kProduct == Product::one_plus_in_fp32) {
        yr[i] = store(normal * (Acc(1) + weight));
      } else if constexpr (kProduct == Product::weight_in_fp32) {
        yr[i] = store(normal * weight);
      } else {
        const T rounded = store(normal);  // the cast back before the weight multiplies it
        yr[i] = store(weight * detail::load<Acc, T, kBf16>(&rounded, 0));
      }
    }
  }
}

#define LINEARIZE_RMS_ROWS(name, T, Acc, kBf16, kProduct)                                                          \
  LINEARIZE_MULTIVERSION void name(const T* x, const T* w, T* y, int64_t n, Acc eps, int64_t begin, int64_t end) { \
    rms_rows<T, Acc, kBf16, kProduct>(x, w, y, n, eps, begin, end);                                                \
  }
// One set of four per product; fp32 and fp64 round nothing, so every product is the same arithmetic there.
#define LINEARIZE_RMS_SET(prefix, kProduct)                                 \
  LINEARIZE_RMS_ROWS(prefix##_fp32, float, float, false, kProduct)          \
  LINEARIZE_RMS_ROWS(prefix##_fp64, double, double, false, kProduct)        \
  LINEARIZE_RMS_ROWS(prefix##_bf16, std::uint16_t, float, true, kProduct)   \
  LINEARIZE_RMS_ROWS(prefix##_fp16, std::uint16_t, float, false, kProduct)
LINEARIZE_RMS_SET(rms, Product::rounded_then_weight)
LINEARIZE_RMS_SET(rms_wide, Product::weight_in_fp32)
LINEARIZE_RMS_SET(rms_one_plus, Product::one_plus_in_fp32)
#undef LINEARIZE_RMS_SET
#undef LINEARIZE_RMS_ROWS

// The fused form where it applies (CPU, no autograd, contiguous x, w of x's dtype); undefined otherwise.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, Product product) {
  const auto dtype = x.scalar_type();
  const bool supported = dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf;
  if (!supported || !x.is_cpu() || !weight.is_cpu() || weight.scalar_type() != dtype || !x.is_contiguous() ||
      !weight.is_contiguous() || x.dim() < 1 || weight.dim() != 1 || weight.size(0) != x.size(-1) ||
      (at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())))
    return {};
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  at::Tensor y = at::empty_like(x);
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const std::uint16_t*>(t.const_data_ptr()); };
  // The loops of `product`, by dtype: fp32, fp64, bf16, fp16.
  struct Loops {
    decltype(&rms_fp32) fp32;
    decltype(&rms_fp64) fp64;
    decltype(&rms_bf16) bf16, fp16;
  };
  const Loops loops = product == Product::one_plus_in_fp32 ? Loops{rms_one_plus_fp32, rms_one_plus_fp64, rms_one_plus_bf16, rms_one_plus_fp16}
                      : product == Product::weight_in_fp32 ? Loops{rms_wide_fp32, rms_wide_fp64, rms_wide_bf16, rms_wide_fp16}
                                                           : Loops{rms_fp32, rms_fp64, rms_bf16, rms_fp16};
  // Rows spread over the threads; a row is a few thousand multiply-adds, so ~16 rows per task.
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
    switch (dtype) {
      case at::kFloat:
        loops.fp32(x.const_data_ptr<float>(), weight.const_data_ptr<float>(), y.mutable_data_ptr<float>(), n,
                   static_cast<float>(eps), begin, end);
        break;
      case at::kDouble:
        loops.fp64(x.const_data_ptr<double>(), weight.const_data_ptr<double>(), y.mutable_data_ptr<double>(), n, eps, begin, end);
        break;
      default:
        (dtype == at::kBFloat16 ? loops.bf16 : loops.fp16)(bits(x), bits(weight), reinterpret_cast<std::uint16_t*>(y.mutable_data_ptr()), n,
                                                          static_cast<float>(eps), begin, end);
    }
  });
  return y;
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (auto y = fused_rms_norm(x, weight, eps, Product::rounded_then_weight); y.defined()) return y;
  return weight * normalised(x, eps).to(x.scalar_type());
}

at::Tensor rms_norm_weight_in_fp32(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (auto y = fused_rms_norm(x, weight, eps, Product::weight_in_fp32); y.defined()) return y;
  const auto y = normalised(x, eps);
  return (y * weight.to(y.scalar_type())).to(x.scalar_type());
}

at::Tensor rms_norm_one_plus(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (auto y = fused_rms_norm(x, weight, eps, Product::one_plus_in_fp32); y.defined()) return y;
  const auto y = normalised(x, eps);
  return (y * (1.0 + weight.to(y.scalar_type()))).to(x.scalar_type());
}

}  // namespace linearize::kernels
