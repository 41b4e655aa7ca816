#include "kernels/delta_rule.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "kernels/chunk_layout.h"

namespace linearize::kernels {
namespace {

struct Problem {
  at::Tensor q, k, v, beta, g;  // compute dtype, q pre-scaled; g undefined without a gate
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, G = 1, K = 0, V = 0;
};

Problem prepare(const DeltaRuleInputs& in, const LinearAttentionOptions& opt) {
  TORCH_CHECK(in.q.defined() && in.k.defined() && in.v.defined() && in.beta.defined(),
              "delta_rule: q, k, v and beta are required");
  TORCH_CHECK(in.q.dim() == 4 && in.k.dim() == 4 && in.v.dim() == 4, "delta_rule: q, k, v must be [B,T,H,D]");
  Problem p;
  p.B = in.q.size(0), p.T = in.q.size(1), p.Hq = in.q.size(2), p.K = in.q.size(3);
  p.Hkv = in.k.size(2), p.V = in.v.size(3);
  TORCH_CHECK(p.T >= 1, "delta_rule: needs at least one token");
  TORCH_CHECK(in.k.size(0) == p.B && in.k.size(1) == p.T && in.k.size(3) == p.K, "delta_rule: k ", in.k.sizes(),
              " does not match q ", in.q.sizes());
  TORCH_CHECK(in.v.size(0) == p.B && in.v.size(1) == p.T && in.v.size(2) == p.Hkv, "delta_rule: v ",
              in.v.sizes(), " does not match k ", in.k.sizes());
  TORCH_CHECK(p.Hkv >= 1 && p.Hq % p.Hkv == 0, "delta_rule: ", p.Hq, " query heads are not a multiple of ",
              p.Hkv, " kv heads");
  const std::vector<int64_t> per_head{p.B, p.T, p.Hkv};
  TORCH_CHECK(in.beta.sizes() == at::IntArrayRef(per_head), "delta_rule: beta must be [B,T,Hkv], got ", in.beta.sizes());
  TORCH_CHECK(!in.log_decay.defined() || in.log_decay.sizes() == at::IntArrayRef(per_head),
              "delta_rule: log_decay must be [B,T,Hkv], got ", in.log_decay.sizes());
  p.G = p.Hq / p.Hkv;
  const auto dtype = detail::compute_dtype({in.q, in.k, in.v, in.beta, in.log_decay});
  p.q = in.q.to(dtype) * opt.scale.value_or(1.0 / std::sqrt(static_cast<double>(p.K)));
  p.k = in.k.to(dtype);
  p.v = in.v.to(dtype);
  p.beta = in.beta.to(dtype);
  p.g = in.log_decay.defined() ? in.log_decay.to(dtype) : at::zeros(per_head, p.k.options());
  return p;
}

LinearAttentionOutput recurrent(const Problem& p, at::Tensor h) {
  const auto qs = p.q.view({p.B, p.T, p.Hkv, p.G, p.K}).unbind(1);
  const auto ks = p.k.unbind(1), vs = p.v.unbind(1), betas = p.beta.unbind(1), gs = p.g.unbind(1);
  std::vector<at::Tensor> os;
  os.reserve(p.T);
  for (int64_t t = 0; t < p.T; ++t) {
    h = h * gs[t].exp().unsqueeze(-1).unsqueeze(-1);
    const at::Tensor read = at::matmul(ks[t].unsqueeze(-2), h).squeeze(-2);  // h^T k: [B,Hkv,V]
    const at::Tensor u = (vs[t] - read) * betas[t].unsqueeze(-1);
    h = h + ks[t].unsqueeze(-1) * u.unsqueeze(-2);
    os.push_back(at::matmul(qs[t], h));
  }
  return {at::stack(os, 1).reshape({p.B, p.T, p.Hq, p.V}), {h, {}}};
}

// WY form over chunks of C tokens (C >= T: one chunk, the parallel form). Per chunk, with G the local
// cumsum of the log gates and S the state at the chunk start:
//   (I + L) U = diag(beta) (V - diag(exp G) K S),  L_tj = beta_t exp(G_t - G_j) k_t.k_j  (j < t)
//   O = diag(exp G) Q S + (Q K^T (.) exp(G_t - G_j), j <= t) U
//   S' = exp(G_last) S + (K (.) exp(G_last - G))^T U
// Everything that does not depend on S is batched over all chunks: W = (I+L)^-1 diag(beta exp G) K and
// Ubar = (I+L)^-1 diag(beta) V, so that U = Ubar - W S in the scan.
LinearAttentionOutput chunked(const Problem& p, at::Tensor h, int64_t C) {
  TORCH_CHECK(C >= 1, "delta_rule: chunk_size must be >= 1");
  const detail::ChunkLayout layout(p.B, p.T, p.Hkv, p.G, C);
  const at::Tensor q = layout.queries(p.q);                     // [B,Hkv,N,G*C,K]
  const at::Tensor k = layout.keys(p.k);                        // [B,Hkv,N,C,K]
  const at::Tensor v = layout.keys(p.v);                        // [B,Hkv,N,C,V]
  const at::Tensor beta = layout.scalars(p.beta).unsqueeze(-1);  // [B,Hkv,N,C,1]
  const at::Tensor Gc = layout.scalars(p.g).cumsum(-1);         // [B,Hkv,N,C]
  const int64_t N = layout.chunks();

  const at::Tensor causal = detail::causal_mask(C, p.q);
  const at::Tensor decay = (Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).clamp_max(0).exp();  // exp(G_t - G_j), j <= t
  const at::Tensor strict = causal.logical_not().logical_or(at::eye(C, causal.options()));
  const at::Tensor L = (at::matmul(k, k.transpose(-1, -2)) * decay * beta).masked_fill(strict, 0);
  const at::Tensor unit_lower = L + at::eye(C, L.options());
  const at::Tensor expG = Gc.exp().unsqueeze(-1);
  const at::Tensor W = at::linalg_solve_triangular(unit_lower, k * (beta * expG), /*upper=*/false, /*left=*/true,
                                                   /*unitriangular=*/true);
  const at::Tensor Ubar = at::linalg_solve_triangular(unit_lower, v * beta, false, true, true);
  const at::Tensor A = (at::matmul(q, k.transpose(-1, -2)).view({p.B, p.Hkv, N, p.G, C, C}) *
                        decay.masked_fill(causal.logical_not(), 0).unsqueeze(3))
                           .view({p.B, p.Hkv, N, p.G * C, C});
  const at::Tensor qdecayed =
      (q.view({p.B, p.Hkv, N, p.G, C, p.K}) * expG.unsqueeze(3)).view({p.B, p.Hkv, N, p.G * C, p.K});
  const at::Tensor last = Gc.narrow(-1, C - 1, 1);                        // [B,Hkv,N,1]
  const at::Tensor kdecayed = k * (last - Gc).exp().unsqueeze(-1);         // [B,Hkv,N,C,K]
  const at::Tensor chunk_decay = last.exp().unsqueeze(-1);                 // [B,Hkv,N,1,1]

  const auto Ws = W.unbind(2), Ubars = Ubar.unbind(2), As = A.unbind(2), Qs = qdecayed.unbind(2),
             Ks = kdecayed.unbind(2), decays = chunk_decay.unbind(2);
  std::vector<at::Tensor> os;
  os.reserve(N);
  for (int64_t n = 0; n < N; ++n) {
    const at::Tensor U = Ubars[n] - at::matmul(Ws[n], h);
    os.push_back(at::matmul(Qs[n], h) + at::matmul(As[n], U));
    h = at::addcmul(at::matmul(Ks[n].transpose(-1, -2), U), h, decays[n]);
  }
  return {layout.merge_queries(at::stack(os, 2)), {h, {}}};
}

}  // namespace

LinearAttentionOutput delta_rule(const DeltaRuleInputs& inputs, const LinearState& initial,
                                 const LinearAttentionOptions& options) {
  const Problem p = prepare(inputs, options);
  at::Tensor h0;
  if (initial.empty()) {
    h0 = at::zeros({p.B, p.Hkv, p.K, p.V}, p.q.options());
  } else {
    TORCH_CHECK(initial.kv.sizes() == at::IntArrayRef({p.B, p.Hkv, p.K, p.V}), "delta_rule: state must be [", p.B,
                ",", p.Hkv, ",", p.K, ",", p.V, "], got ", initial.kv.sizes());
    h0 = initial.kv.to(p.q.scalar_type());
  }
  LinearAttentionOutput out;
  switch (options.form) {
    case MixerForm::parallel: out = chunked(p, std::move(h0), p.T); break;
    case MixerForm::chunked: out = chunked(p, std::move(h0), options.chunk_size); break;
    case MixerForm::recurrent: out = recurrent(p, std::move(h0)); break;
  }
  out.o = out.o.to(inputs.q.scalar_type());
  return out;
}

}  // namespace linearize::kernels
