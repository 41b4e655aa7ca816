#include "kernels/decode_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>

#include "kernels/cpu_loops.h"

namespace linearize::kernels {
namespace {

// Sizes and element strides of the two passes; q [B, H, D], scores [B, H, S], numerator [B, H, V] contiguous.
struct Layout {
  int64_t Hkv, G, S, D, V;
  int64_t k_batch, k_head, k_step, v_batch, v_head, v_step;
};

enum class Pass { scores, weighted_values };

// Kv heads [begin, end) of B * Hkv. scores: s_j - max_j s_j per query head (the exp runs between the
// passes, vectorised by ATen). weighted_values: numerator and denominator from the exponentials.
template <typename Acc, typename KV, bool kBf16>
LINEARIZE_INLINE void heads(Pass pass, const Acc* q, const KV* k, const KV* v, Acc* scores, Acc* numerator,
                            Acc* denominator, Acc* maxima, const Layout& L, Acc scale, int64_t begin, int64_t end) {
  const int64_t G = L.G, S = L.S;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / L.Hkv, h = bh % L.Hkv;
    Acc* s = scores + bh * G * S;  // the group's G rows
    if (pass == Pass::scores) {
      const Acc* qg = q + bh * G * L.D;
      const KV* kh = k + b * L.k_batch + h * L.k_head;
      for (int64_t j = 0; j < S; ++j)
        for (int64_t g = 0; g < G; ++g) s[g * S + j] = scale * detail::dot<Acc, KV, kBf16>(qg + g * L.D, kh + j * L.k_step, L.D);
      for (int64_t g = 0; g < G; ++g) {
        Acc* row = s + g * S;
        const Acc c = *std::max_element(row, row + S);
        for (int64_t j = 0; j < S; ++j) row[j] -= c;
        maxima[bh * G + g] = c;
      }
      continue;
    }
    const KV* vh = v + b * L.v_batch + h * L.v_head;
    Acc* num = numerator + bh * G * L.V;
    std::fill(num, num + G * L.V, Acc(0));
    for (int64_t g = 0; g < G; ++g) denominator[bh * G + g] = 0;
    for (int64_t j = 0; j < S; ++j) {
      const KV* vj = vh + j * L.v_step;
      for (int64_t g = 0; g < G; ++g) {
        const Acc w = s[g * S + j];
        denominator[bh * G + g] += w;
        Acc* out = num + g * L.V;
        for (int64_t i = 0; i < L.V; ++i) out[i] += w * detail::load<Acc, KV, kBf16>(vj, i);
      }
    }
  }
}

#define LINEARIZE_DECODE_HEADS(name, Acc, KV, kBf16)                                                              \
  LINEARIZE_MULTIVERSION void name(Pass pass, const Acc* q, const KV* k, const KV* v, Acc* s, Acc* num, Acc* den, \
                                   Acc* maxima, const Layout& L, Acc scale, int64_t begin, int64_t end) {           \
    heads<Acc, KV, kBf16>(pass, q, k, v, s, num, den, maxima, L, scale, begin, end);                                 \
  }
LINEARIZE_DECODE_HEADS(heads_fp32, float, float, false)
LINEARIZE_DECODE_HEADS(heads_fp64, double, double, false)
LINEARIZE_DECODE_HEADS(heads_bf16, float, std::uint16_t, true)
LINEARIZE_DECODE_HEADS(heads_fp16, float, std::uint16_t, false)
#undef LINEARIZE_DECODE_HEADS

bool cpu_floating(const at::Tensor& t) {
  const auto d = t.scalar_type();
  return t.is_cpu() && (d == at::kFloat || d == at::kDouble || d == at::kBFloat16 || d == at::kHalf);
}

}  // namespace

bool decode_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!cpu_floating(q) || !cpu_floating(k) || k.scalar_type() != v.scalar_type()) return false;
  if ((q.scalar_type() == at::kDouble) != (k.scalar_type() == at::kDouble)) return false;
  if (at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad())) return false;
  return q.dim() == 3 && k.dim() == 4 && v.dim() == 4 && k.stride(3) == 1 && v.stride(3) == 1;
}

DecodeAttentionParts decode_attention_parts(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(decode_attention_applies(q, k, v), "decode_attention_parts: CPU q [B,H,D], k [B,Hkv,S,D], v [B,Hkv,S,V] "
              "without autograd, k and v of one dtype, last dimensions contiguous");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1), S = k.size(2), V = v.size(3);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S && k.size(3) == D && S >= 1 &&
                  Hkv >= 1 && H % Hkv == 0,
              "decode_attention_parts: q [B,H,D], k [B,Hkv,S,D], v [B,Hkv,S,V] with H a multiple of Hkv and S >= 1");
  const auto acc = k.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor qc = q.to(acc).contiguous();
  const auto opts = qc.options();
  at::Tensor scores = at::empty({B, H, S}, opts), numerator = at::empty({B, H, V}, opts), denominator = at::empty({B, H}, opts),
             row_max = at::empty({B, H}, opts);
  const Layout L{Hkv, H / Hkv, S, D, V, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2)};
  // A kv head's scores and values are the unit of work; tiny problems stay on the calling thread, where a
  // fork would cost more than the arithmetic (~32K multiply-adds per task).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, L.G * S * (D + V)));
  const auto run = [&](Pass pass) {
    at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
      switch (k.scalar_type()) {
        case at::kFloat:
          heads_fp32(pass, qc.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(),
                     scores.mutable_data_ptr<float>(), numerator.mutable_data_ptr<float>(),
                     denominator.mutable_data_ptr<float>(), row_max.mutable_data_ptr<float>(), L, static_cast<float>(scale),
                     begin, end);
          break;
        case at::kDouble:
          heads_fp64(pass, qc.const_data_ptr<double>(), k.const_data_ptr<double>(), v.const_data_ptr<double>(),
                     scores.mutable_data_ptr<double>(), numerator.mutable_data_ptr<double>(),
                     denominator.mutable_data_ptr<double>(), row_max.mutable_data_ptr<double>(), L, scale, begin, end);
          break;
        default:
          (k.scalar_type() == at::kBFloat16 ? heads_bf16 : heads_fp16)(
              pass, qc.const_data_ptr<float>(), reinterpret_cast<const std::uint16_t*>(k.const_data_ptr()),
              reinterpret_cast<const std::uint16_t*>(v.const_data_ptr()), scores.mutable_data_ptr<float>(),
              numerator.mutable_data_ptr<float>(), denominator.mutable_data_ptr<float>(), row_max.mutable_data_ptr<float>(), L,
              static_cast<float>(scale), begin, end);
      }
    });
  };
  run(Pass::scores);
  scores.exp_();  // every exponent <= 0, the row max's exactly 0: the denominator is >= 1
  run(Pass::weighted_values);
  return {numerator, denominator, row_max};
}

}  // namespace linearize::kernels
