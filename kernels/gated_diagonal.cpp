#include "kernels/gated_diagonal.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

#include "kernels/chunk_layout.h"
#include "kernels/cpu_multiversion.h"

namespace linearize::kernels::detail {
namespace {

// ---- K-length vector loops (no reduction except dot, whose partial sums make it vectorise) ----
template <typename T>
LINEARIZE_INLINE T dot(const T* x, const T* y, int64_t K) {
  constexpr int64_t L = 16;
  T part[L] = {};
  int64_t i = 0;
  for (; i + L <= K; i += L) {
    for (int64_t l = 0; l < L; ++l) part[l] += x[i + l] * y[i + l];
  }
  T sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += part[l];
  for (; i < K; ++i) sum += x[i] * y[i];
  return sum;
}

// acc = s * x
template <typename T>
LINEARIZE_INLINE void scaled_copy(T* acc, T s, const T* x, int64_t K) {
  for (int64_t i = 0; i < K; ++i) acc[i] = s * x[i];
}

// acc = acc (.) decay + s * x
template <typename T>
LINEARIZE_INLINE void decay_axpy(T* acc, const T* decay, T s, const T* x, int64_t K) {
  for (int64_t i = 0; i < K; ++i) acc[i] = acc[i] * decay[i] + s * x[i];
}

// Forward for chunks [begin, end): q [Gq,C,K], k and a = exp(g) [C,K] per chunk, A [C/c,Gq,c,c] (zeroed).
// Row i of a sub-chunk walks j = i, i-1, ... while w = q_i (.) prod_{t=j+1..i} a_t gains one factor a_j
// per step, so A_ij = w . k_j is exact for every j <= i.
template <typename T>
LINEARIZE_INLINE void forward_chunks(const T* q, const T* k, const T* a, T* A, T* w, int64_t begin, int64_t end,
                                     int64_t C, int64_t c, int64_t K, int64_t Gq) {
  const int64_t NC = C / c;
  for (int64_t m = begin; m < end; ++m) {
    const T* qm = q + m * Gq * C * K;
    const T* km = k + m * C * K;
    const T* am = a + m * C * K;
    T* Am = A + m * NC * Gq * c * c;
    for (int64_t s = 0; s < NC; ++s) {
      const T* ks = km + s * c * K;
      const T* as = am + s * c * K;
      for (int64_t h = 0; h < Gq; ++h) {
        const T* qs = qm + (h * C + s * c) * K;
        T* As = Am + (s * Gq + h) * c * c;
        for (int64_t i = 0; i < c; ++i) {
          std::copy(qs + i * K, qs + (i + 1) * K, w);
          for (int64_t j = i;; --j) {
            As[i * c + j] = dot(w, ks + j * K, K);
            if (j == 0) break;
            for (int64_t x = 0; x < K; ++x) w[x] *= as[j * K + x];
          }
        }
      }
    }
  }
}

// Backward for chunks [begin, end): dq [Gq,C,K] (written), dk and dG [C,K] (zeroed). Both sums are Horner
// schemes over the same products of decays as the forward:
//   dq_i = sum_{j<=i} dA_ij k_j prod_{t=j+1..i} a_t  (j ascending: acc = acc (.) a_j + dA_ij k_j)
//   dk_j = sum_{i>=j} dA_ij q_i prod_{t=j+1..i} a_t  (i descending: acc = acc (.) a_{i+1} + dA_ij q_i)
// and, as A_ij depends on G through exp(G_i - G_j), dG = sum_heads q (.) dq - k (.) dk.
template <typename T>
LINEARIZE_INLINE void backward_chunks(const T* q, const T* k, const T* a, const T* dA, T* dq, T* dk, T* dG, T* w,
                                      int64_t begin, int64_t end, int64_t C, int64_t c, int64_t K, int64_t Gq) {
  const int64_t NC = C / c;
  for (int64_t m = begin; m < end; ++m) {
    const T* qm = q + m * Gq * C * K;
    const T* km = k + m * C * K;
    const T* am = a + m * C * K;
    const T* dAm = dA + m * NC * Gq * c * c;
    T* dqm = dq + m * Gq * C * K;
    T* dkm = dk + m * C * K;
    T* dGm = dG + m * C * K;
    for (int64_t s = 0; s < NC; ++s) {
      const T* ks = km + s * c * K;
      const T* as = am + s * c * K;
      T* dks = dkm + s * c * K;
      T* dGs = dGm + s * c * K;
      for (int64_t h = 0; h < Gq; ++h) {
        const T* qs = qm + (h * C + s * c) * K;
        const T* dAs = dAm + (s * Gq + h) * c * c;
        T* dqs = dqm + (h * C + s * c) * K;
        for (int64_t i = 0; i < c; ++i) {
          T* row = dqs + i * K;
          scaled_copy(row, dAs[i * c], ks, K);
          for (int64_t j = 1; j <= i; ++j) decay_axpy(row, as + j * K, dAs[i * c + j], ks + j * K, K);
        }
        for (int64_t j = 0; j < c; ++j) {
          scaled_copy(w, dAs[(c - 1) * c + j], qs + (c - 1) * K, K);
          for (int64_t i = c - 2; i >= j; --i) decay_axpy(w, as + (i + 1) * K, dAs[i * c + j], qs + i * K, K);
          for (int64_t x = 0; x < K; ++x) dks[j * K + x] += w[x];
        }
        for (int64_t x = 0; x < c * K; ++x) dGs[x] += qs[x] * dqs[x];
      }
      for (int64_t x = 0; x < c * K; ++x) dGs[x] -= ks[x] * dks[x];
    }
  }
}

LINEARIZE_MULTIVERSION void forward_range(const float* q, const float* k, const float* a, float* A, float* w,
                                          int64_t begin, int64_t end, int64_t C, int64_t c, int64_t K, int64_t Gq) {
  forward_chunks(q, k, a, A, w, begin, end, C, c, K, Gq);
}
LINEARIZE_MULTIVERSION void forward_range(const double* q, const double* k, const double* a, double* A, double* w,
                                          int64_t begin, int64_t end, int64_t C, int64_t c, int64_t K, int64_t Gq) {
  forward_chunks(q, k, a, A, w, begin, end, C, c, K, Gq);
}
LINEARIZE_MULTIVERSION void backward_range(const float* q, const float* k, const float* a, const float* dA, float* dq,
                                           float* dk, float* dG, float* w, int64_t begin, int64_t end, int64_t C,
                                           int64_t c, int64_t K, int64_t Gq) {
  backward_chunks(q, k, a, dA, dq, dk, dG, w, begin, end, C, c, K, Gq);
}
LINEARIZE_MULTIVERSION void backward_range(const double* q, const double* k, const double* a, const double* dA,
                                           double* dq, double* dk, double* dG, double* w, int64_t begin, int64_t end,
                                           int64_t C, int64_t c, int64_t K, int64_t Gq) {
  backward_chunks(q, k, a, dA, dq, dk, dG, w, begin, end, C, c, K, Gq);
}

// Autograd for the CPU kernel; a = exp(g) is a by-product of G's inputs, so it gets no gradient.
struct GatedDiagonal : public torch::autograd::Function<GatedDiagonal> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& /*G: differentiated through, evaluated via g*/, const at::Tensor& g,
                            int64_t c) {
    const at::Tensor qc = q.contiguous(), kc = k.contiguous(), a = g.exp().contiguous();
    ctx->save_for_backward({qc, kc, a});
    ctx->saved_data["c"] = c;
    return gated_diagonal_scores_forward(qc, kc, a, c);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &a = saved[2];
    const int64_t c = ctx->saved_data["c"].toInt();
    const at::Tensor dA = grads[0].contiguous();
    const int64_t M = k.size(0), C = k.size(1), K = k.size(2), Gq = q.size(1);
    at::Tensor dq = at::empty_like(q), dk = at::zeros_like(k), dG = at::zeros_like(k);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_diagonal_backward", [&] {
      at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> w(K);
        backward_range(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                       dA.const_data_ptr<scalar_t>(), dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                       dG.mutable_data_ptr<scalar_t>(), w.data(), begin, end, C, c, K, Gq);
      });
    });
    return {dq, dk, dG, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor gated_diagonal_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& G, const at::Tensor& g,
                                 int64_t c) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3 && G.sizes() == k.sizes() && g.sizes() == k.sizes() &&
                  q.size(0) == k.size(0) && q.size(2) == k.size(1) && q.size(3) == k.size(2),
              "gated_diagonal_scores: q [M,Gq,C,K], k, G, g [M,C,K], got ", q.sizes(), ", ", k.sizes(), ", ",
              G.sizes(), ", ", g.sizes());
  TORCH_CHECK(c >= 1 && k.size(1) % c == 0, "gated_diagonal_scores: sub-chunk ", c, " must divide ", k.size(1));
  if (!q.is_cpu()) return gated_diagonal_scores_reference(q, k, G, c);
  return GatedDiagonal::apply(q, k, G, g, c);
}

at::Tensor gated_diagonal_scores_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& a, int64_t c) {
  TORCH_CHECK(q.is_cpu() && q.is_contiguous() && k.is_contiguous() && a.is_contiguous() && a.sizes() == k.sizes(),
              "gated_diagonal_scores_forward: contiguous CPU q [M,Gq,C,K], k and a [M,C,K]");
  const int64_t M = k.size(0), C = k.size(1), K = k.size(2), Gq = q.size(1);
  at::Tensor A = at::zeros({M, C / c, Gq, c, c}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_diagonal_forward", [&] {
    at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> w(K);
      forward_range(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                    A.mutable_data_ptr<scalar_t>(), w.data(), begin, end, C, c, K, Gq);
    });
  });
  return A;
}

at::Tensor gated_diagonal_scores_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& G, int64_t c) {
  const int64_t M = k.size(0), C = k.size(1), K = k.size(2), Gq = q.size(1), NC = C / c;
  const at::Tensor Gs = G.view({M, NC, c, K});
  // exp(G_i - G_j) over [M,NC,c(i),c(j),K]; clamped at 0 above the diagonal (masked below) so nothing overflows.
  const at::Tensor pairwise = (Gs.unsqueeze(-2) - Gs.unsqueeze(-3)).clamp_max(0).exp();
  const at::Tensor qs = q.view({M, Gq, NC, c, K}).permute({0, 2, 3, 4, 1});  // [M,NC,c(i),K,Gq]
  return at::matmul(pairwise * k.view({M, NC, 1, c, K}), qs)               // [M,NC,c(i),c(j),Gq]
      .permute({0, 1, 4, 2, 3})
      .masked_fill(causal_mask(c, q).logical_not(), 0);
}

}  // namespace linearize::kernels::detail
