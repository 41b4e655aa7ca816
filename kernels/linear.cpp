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

// Decode reads each weight row once, so the loop runs at the memory's pace only if loads stay in flight: a
// prefetch kLookahead bytes ahead (past the row's end into the next one). With it and the word pairs below,
// one core streams bf16 weights about as fast as MKL's fp32 GEMV streams fp32 ones, and faster than
// oneDNN's bf16 GEMM: scripts/bench.sh kernels (BM_DecodeProjection).
constexpr int64_t kLookahead = 2048;

using Floats = float __attribute__((vector_size(64)));  // GCC vector types: 16 lanes, any clone's ISA
using Words = std::uint32_t __attribute__((vector_size(64)));
using Halves = std::uint16_t __attribute__((vector_size(32)));  // bf16 or fp16 bit patterns
template <typename Vector>
LINEARIZE_INLINE void load(Vector& vector, const void* p) { std::memcpy(&vector, p, sizeof vector); }

// fp16 bit patterns (zero-extended) to fp32 by integer steps that vectorise (GCC converts _Float16 vectors
// one lane at a time): the magnitude's bits moved into fp32's place and scaled by 2^(127-15), exact for
// normal and subnormal halves; infinities and NaNs get fp32's all-ones exponent; the sign moved over.
// (Vectors passed by reference: a vector return value's ABI differs between the clones.)
LINEARIZE_INLINE void fp16_to_fp32(const Words& h, Floats& f) {
  const Floats scaled = reinterpret_cast<Floats>((h & 0x7FFFu) << 13) * 0x1p112f;
  const Words inf_or_nan = reinterpret_cast<Words>((h & 0x7C00u) == 0x7C00u) & 0x7F800000u;
  f = reinterpret_cast<Floats>(reinterpret_cast<Words>(scaled) | inf_or_nan | ((h & 0x8000u) << 16));
}

// sum_i x[i] w[i], 16 elements of w widened at a time.
// (GCC vector types: a prefetch inside the loop stops the auto-vectoriser, and the loop ran scalar.)
template <bool kBf16>
LINEARIZE_INLINE float dot_widened(const float* x, const std::uint16_t* w, int64_t n) {
  constexpr int64_t L = sizeof(Floats) / sizeof(float);
  Floats acc{}, xv, wv;
  Halves half;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    __builtin_prefetch(w + i + kLookahead / 2);
    load(half, w + i), load(xv, x + i);
    const Words h = __builtin_convertvector(half, Words);
    if constexpr (kBf16) {
      wv = reinterpret_cast<Floats>(h << 16);  // same-size vector casts keep the bits
    } else {
      fp16_to_fp32(h, wv);
    }
    acc += xv * wv;
  }
  float sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += acc[l];
  for (; i < n; ++i) sum += x[i] * widen(w[i], kBf16);
  return sum;
}

// A row read as 32-bit words (even length, little-endian): a word's low half is element 2j and its high
// half element 2j+1, so the row streams at full load width (64-byte loads where the widened form takes
// 32); x comes split into its even and odd elements. A bf16 half widens by one
// shift or one mask (bf16 is fp32's top half), an fp16 one through fp16_to_fp32.
template <bool kBf16>
LINEARIZE_INLINE float dot_pairs(const float* x_even, const float* x_odd, const std::uint32_t* w, int64_t pairs) {
  constexpr int64_t L = sizeof(Words) / sizeof(std::uint32_t);
  Floats even{}, odd{}, xe, xo, we, wo;
  Words word;
  int64_t j = 0;
  for (; j + L <= pairs; j += L) {
    __builtin_prefetch(w + j + kLookahead / 4);
    load(word, w + j), load(xe, x_even + j), load(xo, x_odd + j);
    if constexpr (kBf16) {
      we = reinterpret_cast<Floats>(word << 16), wo = reinterpret_cast<Floats>(word & 0xFFFF0000u);
    } else {
      fp16_to_fp32(word & 0xFFFFu, we), fp16_to_fp32(word >> 16, wo);
    }
    even += xe * we;
    odd += xo * wo;
  }
  float sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += even[l] + odd[l];
  for (; j < pairs; ++j)
    sum += x_even[j] * widen(static_cast<std::uint16_t>(w[j] & 0xFFFFu), kBf16) + x_odd[j] * widen(static_cast<std::uint16_t>(w[j] >> 16), kBf16);
  return sum;
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

// y[r, o] = x[r] . w[o] (+ b[o]) for o in [begin, end), summed in fp32 and rounded once to the weights'
// dtype (y and b as their bits); the rows of x reuse each weight row from cache.
// x, w, b and y as their bits; each task widens x once (a few rows) into fp32.
template <bool kBf16>
LINEARIZE_INLINE void matvec_rows(const std::uint16_t* x, const std::uint16_t* w, const std::uint16_t* b, std::uint16_t* y,
                                  int64_t rows, int64_t in, int64_t out, int64_t begin, int64_t end) {
  const bool pairs = kLittleEndian && in % 2 == 0 && reinterpret_cast<std::uintptr_t>(w) % 4 == 0;
  // Row r widened: in order, or (pairs) its even elements then its odd ones.
  std::vector<float> xf(static_cast<std::size_t>(rows * in));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) xf[r * in + (pairs ? (i % 2) * (in / 2) + i / 2 : i)] = widen(x[r * in + i], kBf16);
  for (int64_t o = begin; o < end; ++o) {
    const float bias = b ? widen(b[o], kBf16) : 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xf.data() + r * in;
      const float dot = pairs ? dot_pairs<kBf16>(xr, xr + in / 2, reinterpret_cast<const std::uint32_t*>(w + o * in), in / 2)
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
