#include "kernels/linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu_loops.h"

namespace linearize::kernels {
namespace {

using detail::widen;

// Decode reads each weight row once, so the loop runs at the memory's pace if loads stay in flight: a
// prefetch kLookahead bytes ahead (past the row's end into the next one) lifted one core's bf16 stream from
// 9 to 11-12 GB/s on a 2-core Xeon (plain loads of the same bytes: 14 GB/s).
constexpr int64_t kLookahead = 2048;

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

// A bf16 row read as 32-bit words (even length, little-endian): a word's low half is element 2j and its
// high half element 2j+1, each widened by one shift or one mask (bf16 is fp32's top half), so the row
// streams at full load width; x comes split into its even and odd elements. 16 partial sums per half.
// (GCC vector types: a prefetch inside the loop stops the auto-vectoriser, and the loop ran scalar.)
LINEARIZE_INLINE float dot_bf16_pairs(const float* x_even, const float* x_odd, const std::uint32_t* w, int64_t pairs) {
  using Floats = float __attribute__((vector_size(64)));
  using Words = std::uint32_t __attribute__((vector_size(64)));
  constexpr int64_t L = sizeof(Words) / sizeof(std::uint32_t);
  const auto load = [](auto& v, const void* p) { std::memcpy(&v, p, sizeof v); };
  Floats even{}, odd{}, xe, xo;
  Words word;
  int64_t j = 0;
  for (; j + L <= pairs; j += L) {
    __builtin_prefetch(w + j + kLookahead / 4);
    load(word, w + j), load(xe, x_even + j), load(xo, x_odd + j);
    even += xe * reinterpret_cast<Floats>(word << 16);  // same-size vector casts keep the bits
    odd += xo * reinterpret_cast<Floats>(word & 0xFFFF0000u);
  }
  float sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += even[l] + odd[l];
  const auto as_float = [](std::uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  };
  for (; j < pairs; ++j) sum += x_even[j] * as_float(w[j] << 16) + x_odd[j] * as_float(w[j] & 0xFFFF0000u);
  return sum;
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// y[r, o] = x[r] . w[o] (+ b[o]) for o in [begin, end), summed in fp32 and rounded once to the weights'
// dtype (y and b as their bits); the rows of x reuse each weight row from cache.
// x, w, b and y as their bits; each task widens x once (a few rows) into fp32.
template <bool kBf16>
LINEARIZE_INLINE void matvec_rows(const std::uint16_t* x, const std::uint16_t* w, const std::uint16_t* b, std::uint16_t* y,
                                  int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  const bool pairs = kBf16 && kLittleEndian && in % 2 == 0 && reinterpret_cast<std::uintptr_t>(w) % 4 == 0;
  // Row r widened: in order, or (pairs) its even elements then its odd ones.
  std::vector<float> xf(static_cast<std::size_t>(rows * in));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) xf[r * in + (pairs ? (i % 2) * (in / 2) + i / 2 : i)] = widen(x[r * in + i], kBf16);
  for (int64_t o = begin; o < end; ++o) {
    const float bias = b ? widen(b[o], kBf16) : 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xf.data() + r * in;
      const float dot = pairs ? dot_bf16_pairs(xr, xr + in / 2, reinterpret_cast<const std::uint32_t*>(w + o * in), in / 2)
                              : dot_widened<kBf16>(xr, w + o * in, in);
      y[r * out + o] = detail::narrow(dot + bias, kBf16);
    }
  }
}
LINEARIZE_MULTIVERSION void matvec_bf16(const std::uint16_t* x, const std::uint16_t* w, const std::uint16_t* b,
                                        std::uint16_t* y, int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  matvec_rows<true>(x, w, b, y, rows, in, out, begin, end);
}
LINEARIZE_MULTIVERSION void matvec_fp16(const std::uint16_t* x, const std::uint16_t* w, const std::uint16_t* b,
                                        std::uint16_t* y, int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  matvec_rows<false>(x, w, b, y, rows, in, out, begin, end);
}

}  // namespace

at::Tensor linear_projection(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const bool half_weights = w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf;
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / std::max<int64_t>(in, 1);
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || (b.defined() && b.requires_grad()));
  if (!half_weights || !x.is_cpu() || !w.is_cpu() || grad || rows > kMatVecMaxRows || x.size(-1) != in ||
      x.scalar_type() != w.scalar_type() || (b.defined() && b.scalar_type() != w.scalar_type()))
    return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc = b.defined() ? b.contiguous() : at::Tensor();
  auto shape = x.sizes().vec();
  shape.back() = out;
  at::Tensor y = at::empty(shape, x.options());
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const std::uint16_t*>(t.const_data_ptr()); };
  const bool bf16 = w.scalar_type() == at::kBFloat16;
  // Output rows spread over the threads, 256 at a time (a grain well above the loop's own cost).
  at::parallel_for(0, out, 256, [&](int64_t begin, int64_t end) {
    (bf16 ? matvec_bf16 : matvec_fp16)(bits(xc), bits(wc), bc.defined() ? bits(bc) : nullptr,
                                       reinterpret_cast<std::uint16_t*>(y.mutable_data_ptr()), rows, in, out, begin, end);
  });
  return y;
}

}  // namespace linearize::kernels
