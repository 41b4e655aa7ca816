#include "kernels/linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>

#include "kernels/cpu_loops.h"

namespace linearize::kernels {
namespace {

using detail::widen;

// sum_i x[i] w[i], w widened on the fly; 16 partial sums make it vectorise.
template <bool kBf16>
LINEARIZE_INLINE float dot_widened(const float* x, const std::uint16_t* w, int64_t n) {
  constexpr int64_t L = 16;
  float part[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int64_t l = 0; l < L; ++l) part[l] += x[i + l] * widen(w[i + l], kBf16);
  float sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += part[l];
  for (; i < n; ++i) sum += x[i] * widen(w[i], kBf16);
  return sum;
}

// y[r, o] = x[r] . w[o] for o in [begin, end); the rows of x reuse each weight row from cache.
template <bool kBf16>
LINEARIZE_INLINE void matvec_rows(const float* x, const std::uint16_t* w, float* y, int64_t rows, int64_t in,
                                  int64_t out, int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o)
    for (int64_t r = 0; r < rows; ++r) y[r * out + o] = dot_widened<kBf16>(x + r * in, w + o * in, in);
}
LINEARIZE_MULTIVERSION void matvec_bf16(const float* x, const std::uint16_t* w, float* y, int64_t rows, int64_t in,
                                        int64_t out, int64_t begin, int64_t end) {
  matvec_rows<true>(x, w, y, rows, in, out, begin, end);
}
LINEARIZE_MULTIVERSION void matvec_fp16(const float* x, const std::uint16_t* w, float* y, int64_t rows, int64_t in,
                                        int64_t out, int64_t begin, int64_t end) {
  matvec_rows<false>(x, w, y, rows, in, out, begin, end);
}

}  // namespace

at::Tensor linear_projection(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const bool half_weights = w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf;
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / std::max<int64_t>(in, 1);
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad()));
  if (!half_weights || !x.is_cpu() || !w.is_cpu() || grad || rows > kMatVecMaxRows || x.size(-1) != in ||
      x.scalar_type() != w.scalar_type())
    return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
  const at::Tensor xf = x.reshape({rows, in}).to(at::kFloat).contiguous(), wc = w.contiguous();
  at::Tensor y = at::empty({rows, out}, x.options().dtype(at::kFloat));
  const auto* wp = reinterpret_cast<const std::uint16_t*>(wc.const_data_ptr());
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  // Output rows spread over the threads, 256 at a time (a grain well above the loop's own cost).
  at::parallel_for(0, out, 256, [&](int64_t begin, int64_t end) {
    (bf16 ? matvec_bf16 : matvec_fp16)(xf.const_data_ptr<float>(), wp, y.mutable_data_ptr<float>(), rows, in, out,
                                       begin, end);
  });
  if (b.defined()) y.add_(b.to(at::kFloat));
  auto shape = x.sizes().vec();
  shape.back() = out;
  return y.to(x.scalar_type()).view(shape);
}

}  // namespace linearize::kernels
