#include "kernels/gla_chunk_terms.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/chunk_layout.h"
#include "kernels/cpu_multiversion.h"
#include "kernels/gated_diagonal.h"

namespace linearize::kernels::detail {
namespace {

// out = x (.) y over K channels
template <typename T>
LINEARIZE_INLINE void multiply(T* out, const T* x, const T* y, int64_t K) {
  for (int64_t i = 0; i < K; ++i) out[i] = x[i] * y[i];
}

// acc = acc (.) y
template <typename T>
LINEARIZE_INLINE void scale_by(T* acc, const T* y, int64_t K) {
  for (int64_t i = 0; i < K; ++i) acc[i] *= y[i];
}

// Chunks [begin, end): q [Gq,C,K], k and a = exp(g) [C,K] per chunk. w is a K-long running product of
// decays, each output row is one multiply of an input row by it (the header's exp(G_x - G_y) factors).
template <typename T>
LINEARIZE_INLINE void chunk_terms(const T* q, const T* k, const T* a, T* qdecayed, T* kdecayed, T* decay, T* qsub,
                                  T* keys, T* w, int64_t begin, int64_t end, int64_t C, int64_t c, int64_t K,
                                  int64_t Gq) {
  const int64_t NC = C / c, key_rows = sub_chunk_keys_offset(NC, c);
  for (int64_t m = begin; m < end; ++m) {
    const T* qm = q + m * Gq * C * K;
    const T* km = k + m * C * K;
    const T* am = a + m * C * K;
    // exp(G_i) = prod_{t <= i} a_t
    std::fill(w, w + K, T(1));
    for (int64_t i = 0; i < C; ++i) {
      scale_by(w, am + i * K, K);
      for (int64_t h = 0; h < Gq; ++h) multiply(qdecayed + ((m * Gq + h) * C + i) * K, qm + (h * C + i) * K, w, K);
    }
    // exp(G_last - G_j) = prod_{t > j} a_t, and after the last row exp(G_last)
    std::fill(w, w + K, T(1));
    for (int64_t j = C - 1; j >= 0; --j) {
      multiply(kdecayed + (m * C + j) * K, km + j * K, w, K);
      scale_by(w, am + j * K, K);
    }
    std::copy(w, w + K, decay + m * K);
    // exp(G_i - ref_s) = prod_{t = s*c+1 .. i} a_t
    for (int64_t s = 0; s < NC; ++s) {
      std::fill(w, w + K, T(1));
      for (int64_t r = 0; r < c; ++r) {
        const int64_t i = s * c + r;
        if (r > 0) scale_by(w, am + i * K, K);
        for (int64_t h = 0; h < Gq; ++h) {
          multiply(qsub + (((m * NC + s) * Gq + h) * c + r) * K, qm + (h * C + i) * K, w, K);
        }
      }
    }
    // exp(ref_s - G_j) = prod_{t = j+1 .. s*c} a_t for j < s*c
    for (int64_t s = 1; s < NC; ++s) {
      T* block = keys + (m * key_rows + sub_chunk_keys_offset(s, c)) * K;
      std::fill(w, w + K, T(1));
      for (int64_t j = s * c - 1; j >= 0; --j) {
        scale_by(w, am + (j + 1) * K, K);
        multiply(block + j * K, km + j * K, w, K);
      }
    }
  }
}

LINEARIZE_MULTIVERSION void terms_range(const float* q, const float* k, const float* a, float* qd, float* kd,
                                        float* decay, float* qsub, float* keys, float* w, int64_t begin, int64_t end,
                                        int64_t C, int64_t c, int64_t K, int64_t Gq) {
  chunk_terms(q, k, a, qd, kd, decay, qsub, keys, w, begin, end, C, c, K, Gq);
}
LINEARIZE_MULTIVERSION void terms_range(const double* q, const double* k, const double* a, double* qd, double* kd,
                                        double* decay, double* qsub, double* keys, double* w, int64_t begin,
                                        int64_t end, int64_t C, int64_t c, int64_t K, int64_t Gq) {
  chunk_terms(q, k, a, qd, kd, decay, qsub, keys, w, begin, end, C, c, K, Gq);
}

GlaChunkTerms fused_chunk_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c) {
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), a = g.exp().contiguous();
  const int64_t M = kc.size(0), C = kc.size(1), K = kc.size(2), Gq = qc.size(1), NC = C / c;
  GlaChunkTerms t;
  t.qdecayed = at::empty_like(qc);
  t.kdecayed = at::empty_like(kc);
  t.decay = at::empty({M, K}, kc.options());
  t.qsub = at::empty({M, NC, Gq, c, K}, qc.options());
  t.keys = at::empty({M, sub_chunk_keys_offset(NC, c), K}, kc.options());
  AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "gla_chunk_terms", [&] {
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> w(K);
      terms_range(qc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                  t.qdecayed.mutable_data_ptr<scalar_t>(), t.kdecayed.mutable_data_ptr<scalar_t>(),
                  t.decay.mutable_data_ptr<scalar_t>(), t.qsub.mutable_data_ptr<scalar_t>(),
                  t.keys.mutable_data_ptr<scalar_t>(), w.data(), begin, end, C, c, K, Gq);
    });
  });
  t.diagonal = gated_diagonal_scores_forward(qc, kc, a, c);
  return t;
}

}  // namespace

GlaChunkTerms gla_chunk_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3 && g.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                  q.size(2) == k.size(1) && q.size(3) == k.size(2),
              "gla_chunk_terms: q [M,Gq,C,K], k and g [M,C,K], got ", q.sizes(), ", ", k.sizes(), ", ", g.sizes());
  TORCH_CHECK(c >= 1 && k.size(1) % c == 0, "gla_chunk_terms: sub-chunk ", c, " must divide ", k.size(1));
  if (!q.is_cpu() || records_grad({q, k, g})) return gla_chunk_terms_reference(q, k, g, c);
  return fused_chunk_terms(q, k, g, c);
}

GlaChunkTerms gla_chunk_terms_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& g, int64_t c) {
  const int64_t M = k.size(0), C = k.size(1), K = k.size(2), Gq = q.size(1), NC = C / c;
  const at::Tensor G = g.cumsum(1);
  const at::Tensor Gs = G.reshape({M, NC, c, K});
  const at::Tensor ref = Gs.select(2, 0), last = G.select(1, C - 1);  // [M,NC,K], [M,K]
  GlaChunkTerms t;
  t.qdecayed = q * G.exp().unsqueeze(1);
  t.kdecayed = k * (last.unsqueeze(1) - G).exp();
  t.decay = last.exp();
  t.qsub = (q.reshape({M, Gq, NC, c, K}) * (Gs - ref.unsqueeze(2)).exp().unsqueeze(1)).transpose(1, 2).contiguous();
  std::vector<at::Tensor> keys;
  for (int64_t a = 1; a < NC; ++a) {
    keys.push_back(k.narrow(1, 0, a * c) * (ref.select(1, a).unsqueeze(1) - G.narrow(1, 0, a * c)).exp());
  }
  t.keys = keys.empty() ? at::zeros({M, 0, K}, k.options()) : at::cat(keys, 1);
  t.diagonal = gated_diagonal_scores(q, k, G, g, c);
  return t;
}

}  // namespace linearize::kernels::detail
