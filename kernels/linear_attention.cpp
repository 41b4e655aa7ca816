#include "kernels/linear_attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/chunk_layout.h"

namespace linearize::kernels {

const char* to_string(MixerForm form) {
  switch (form) {
    case MixerForm::parallel: return "parallel";
    case MixerForm::chunked: return "chunked";
    case MixerForm::recurrent: return "recurrent";
  }
  return "?";
}

int64_t LinearState::bytes() const {
  int64_t total = kv.defined() ? kv.numel() * static_cast<int64_t>(kv.element_size()) : 0;
  if (k_sum.defined()) total += k_sum.numel() * static_cast<int64_t>(k_sum.element_size());
  return total;
}

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

enum class Gate { none, scalar, channel };

// The validated problem in the compute dtype. q is pre-multiplied by the scale; v carries an extra
// column of ones when normalising, so the normaliser z rides along as the state's last column.
struct Problem {
  at::Tensor q, k, v, g;  // g: [B,T,Hkv] (scalar) or [B,T,Hkv,K] (channel), undefined for none
  Gate gate = Gate::none;
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, G = 1, K = 0, V = 0;
};

struct CoreResult {
  at::Tensor o;  // [B,T,Hq,V'] compute dtype
  at::Tensor h;  // [B,Hkv,K,V']
};

Problem prepare(const LinearAttentionInputs& in, const LinearAttentionOptions& opt) {
  TORCH_CHECK(in.q.defined() && in.k.defined() && in.v.defined(), "linear_attention: q, k and v are required");
  TORCH_CHECK(in.q.dim() == 4 && in.k.dim() == 4 && in.v.dim() == 4,
              "linear_attention: q, k, v must be [B,T,H,D], got ", in.q.sizes(), ", ", in.k.sizes(), ", ",
              in.v.sizes());
  Problem p;
  p.B = in.q.size(0), p.T = in.q.size(1), p.Hq = in.q.size(2), p.K = in.q.size(3);
  p.Hkv = in.k.size(2), p.V = in.v.size(3);
  TORCH_CHECK(p.T >= 1, "linear_attention: needs at least one token");
  TORCH_CHECK(in.k.size(0) == p.B && in.k.size(1) == p.T && in.k.size(3) == p.K,
              "linear_attention: k ", in.k.sizes(), " does not match q ", in.q.sizes());
  TORCH_CHECK(in.v.size(0) == p.B && in.v.size(1) == p.T && in.v.size(2) == p.Hkv,
              "linear_attention: v ", in.v.sizes(), " does not match k ", in.k.sizes());
  TORCH_CHECK(p.Hkv >= 1 && p.Hq % p.Hkv == 0, "linear_attention: ", p.Hq,
              " query heads are not a multiple of ", p.Hkv, " kv heads");
  TORCH_CHECK(!(in.log_decay.defined() && in.log_gamma.defined()),
              "linear_attention: give log_decay or log_gamma, not both");
  p.G = p.Hq / p.Hkv;

  const auto dtype = detail::compute_dtype({in.q, in.k, in.v, in.log_decay, in.log_gamma});
  const double scale = opt.scale.value_or(1.0 / std::sqrt(static_cast<double>(p.K)));
  p.q = in.q.to(dtype) * scale;
  p.k = in.k.to(dtype);
  p.v = in.v.to(dtype);
  if (opt.normalize) p.v = at::cat({p.v, at::ones({p.B, p.T, p.Hkv, 1}, p.v.options())}, -1);

  if (in.log_decay.defined()) {
    const auto& g = in.log_decay;
    const bool scalar = g.dim() == 3 && g.sizes() == at::IntArrayRef({p.B, p.T, p.Hkv});
    const bool channel = g.dim() == 4 && g.sizes() == in.k.sizes();
    TORCH_CHECK(scalar || channel, "linear_attention: log_decay must be [B,T,Hkv] or [B,T,Hkv,K] = ",
                in.k.sizes(), ", got ", g.sizes());
    p.gate = scalar ? Gate::scalar : Gate::channel;
    p.g = g.to(dtype);
  } else if (in.log_gamma.defined()) {
    TORCH_CHECK(in.log_gamma.dim() == 1 && in.log_gamma.size(0) == p.Hkv,
                "linear_attention: log_gamma must be [Hkv] = [", p.Hkv, "], got ", in.log_gamma.sizes());
    p.gate = Gate::scalar;
    p.g = in.log_gamma.to(dtype).expand({p.B, p.T, p.Hkv});
  }
  return p;
}

// Unpacks the core's result: splits the normaliser column off and divides by it.
LinearAttentionOutput finish(CoreResult r, const Problem& p, const LinearAttentionOptions& opt,
                             at::ScalarType out_dtype) {
  LinearAttentionOutput out;
  if (opt.normalize) {
    const int64_t V = p.V;
    out.o = r.o.narrow(-1, 0, V) / (r.o.narrow(-1, V, 1) + opt.eps);
    out.state.kv = r.h.narrow(-1, 0, V);
    out.state.k_sum = r.h.select(-1, V);
  } else {
    out.o = r.o;
    out.state.kv = r.h;
  }
  out.o = out.o.to(out_dtype);
  return out;
}

// The state as the core carries it: [B,Hkv,K,V'] in the compute dtype (zeros when empty).
at::Tensor initial_state(const LinearState& s, const Problem& p, const LinearAttentionOptions& opt) {
  const auto options = p.q.options();
  const int64_t V = p.V;
  if (s.empty()) return at::zeros({p.B, p.Hkv, p.K, p.v.size(-1)}, options);
  TORCH_CHECK(s.kv.sizes() == at::IntArrayRef({p.B, p.Hkv, p.K, V}), "linear_attention: state must be [",
              p.B, ",", p.Hkv, ",", p.K, ",", V, "], got ", s.kv.sizes());
  at::Tensor h = s.kv.to(options.dtype());
  if (!opt.normalize) return h;
  TORCH_CHECK(s.k_sum.defined() && s.k_sum.sizes() == at::IntArrayRef({p.B, p.Hkv, p.K}),
              "linear_attention: a normalised state needs k_sum [B,Hkv,K]");
  return at::cat({h, s.k_sum.to(options.dtype()).unsqueeze(-1)}, -1);
}

// ---- recurrent: S_t = diag(exp g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t (q pre-scaled) ----
CoreResult recurrent(const Problem& p, at::Tensor h) {
  // unbind, not select in a loop: select's backward would allocate a full-size gradient per token.
  const auto qs = p.q.view({p.B, p.T, p.Hkv, p.G, p.K}).unbind(1);
  const auto ks = p.k.unbind(1);
  const auto vs = p.v.unbind(1);
  std::vector<at::Tensor> gs;
  if (p.gate != Gate::none) gs = p.g.unbind(1);
  std::vector<at::Tensor> os;
  os.reserve(p.T);
  for (int64_t t = 0; t < p.T; ++t) {
    const at::Tensor kv = ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2);
    if (p.gate == Gate::scalar) {
      h = at::addcmul(kv, h, gs[t].exp().unsqueeze(-1).unsqueeze(-1));
    } else if (p.gate == Gate::channel) {
      h = at::addcmul(kv, h, gs[t].exp().unsqueeze(-1));
    } else {
      h = h + kv;
    }
    os.push_back(at::matmul(qs[t], h));  // [B,Hkv,G,K] x [B,Hkv,K,V] -> [B,Hkv,G,V]
  }
  return {at::stack(os, 1).reshape({p.B, p.T, p.Hq, -1}), h};
}

// ---- parallel: o = (QK^T (.) D) V + (Q (.) exp Gc) h0 with D_ij = exp(Gc_i - Gc_j) for j <= i ----
CoreResult parallel(const Problem& p, const at::Tensor& h0) {
  const at::Tensor q = p.q.view({p.B, p.T, p.Hkv, p.G, p.K}).permute({0, 2, 3, 1, 4});  // [B,Hkv,G,T,K]
  const at::Tensor k = p.k.permute({0, 2, 1, 3});                                       // [B,Hkv,T,K]
  const at::Tensor v = p.v.permute({0, 2, 1, 3});                                       // [B,Hkv,T,V]
  const at::Tensor causal = detail::causal_mask(p.T, p.q);
  at::Tensor A, qdecayed = q, kdecayed = k, hdecayed = h0;
  if (p.gate == Gate::none) {
    A = at::matmul(q, k.unsqueeze(2).transpose(-1, -2)).masked_fill(causal.logical_not(), 0);
  } else if (p.gate == Gate::scalar) {
    const at::Tensor Gc = p.g.cumsum(1).permute({0, 2, 1});  // [B,Hkv,T]
    const at::Tensor D = (Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(causal.logical_not(), kNegInf).exp();
    A = at::matmul(q, k.unsqueeze(2).transpose(-1, -2)) * D.unsqueeze(2);
    qdecayed = q * Gc.exp().unsqueeze(2).unsqueeze(-1);
    const at::Tensor last = Gc.narrow(-1, p.T - 1, 1);  // [B,Hkv,1]
    kdecayed = k * (last - Gc).exp().unsqueeze(-1);
    hdecayed = h0 * last.exp().unsqueeze(-1);
  } else {
    const at::Tensor Gc = p.g.cumsum(1).permute({0, 2, 1, 3});  // [B,Hkv,T,K]
    const at::Tensor E = (Gc.unsqueeze(3) - Gc.unsqueeze(2))
                             .masked_fill(causal.logical_not().unsqueeze(-1), kNegInf)
                             .exp();  // [B,Hkv,T(i),T(j),K]
    A = at::einsum("bhgik,bhjk,bhijk->bhgij", {q, k, E});
    qdecayed = q * Gc.exp().unsqueeze(2);
    const at::Tensor last = Gc.narrow(2, p.T - 1, 1);  // [B,Hkv,1,K]
    kdecayed = k * (last - Gc).exp();
    hdecayed = h0 * last.squeeze(2).exp().unsqueeze(-1);
  }
  const at::Tensor o = at::matmul(A, v.unsqueeze(2)) + at::matmul(qdecayed, h0.unsqueeze(2));  // [B,Hkv,G,T,V]
  const at::Tensor h = hdecayed + at::matmul(kdecayed.transpose(-1, -2), v);
  return {o.permute({0, 3, 1, 2, 4}).reshape({p.B, p.T, p.Hq, -1}), h};
}

// ---- chunked (research/kernels.md 1.1): per chunk, the state contribution (K (.) exp(G_last - G))^T V,
// a scan over chunk states only, then o = (Q (.) exp G) h_n + A V with the intra-chunk scores A.
// G is the per-chunk inclusive cumsum of the log gates (reset at each chunk), so exponents are <= 0.

// Intra-chunk output for a scalar gate (or none): A = (Q K^T) (.) exp(G_i - G_j) on j <= i.
at::Tensor intra_scalar(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& Gs,
                        const at::Tensor& causal, int64_t G) {
  const auto sizes = k.sizes();  // [B,Hkv,n,C,K]
  const int64_t C = sizes[3];
  at::Tensor A = at::matmul(q, k.transpose(-1, -2));  // [B,Hkv,n,G*C,C]
  if (Gs.defined()) {
    const at::Tensor D = (Gs.unsqueeze(-1) - Gs.unsqueeze(-2)).masked_fill(causal.logical_not(), kNegInf).exp();
    A = (A.view({sizes[0], sizes[1], sizes[2], G, C, C}) * D.unsqueeze(3)).view({sizes[0], sizes[1], sizes[2], G * C, C});
  } else {
    A = A.masked_fill(causal.logical_not().repeat({G, 1}), 0);
  }
  return at::matmul(A, v);
}

// Intra-chunk output for a per-channel gate, fla's secondary chunking with sub-chunks of c tokens:
// off-diagonal blocks (query sub-chunk a > key sub-chunk b) are matmuls of
// (q_a (.) exp(G_a - G_end(b))) and (k_b (.) exp(G_end(b) - G_b)), both exponents <= 0; diagonal blocks
// use the exact pairwise exp(G_i - G_j) element-wise.
at::Tensor intra_channel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& Gs,
                         int64_t G, int64_t c) {
  const auto sizes = k.sizes();  // [B,Hkv,n,C,K]
  const int64_t B = sizes[0], H = sizes[1], n = sizes[2], C = sizes[3], K = sizes[4], V = v.size(-1);
  const int64_t NC = C / c;
  const at::Tensor Gsub = Gs.view({B, H, n, NC, c, K});
  const at::Tensor ksub = k.view({B, H, n, NC, c, K});
  const at::Tensor vsub = v.view({B, H, n, NC, c, V});
  const at::Tensor qsub = q.view({B, H, n, G, NC, c, K});

  // Diagonal blocks: A[a,i,j] = sum_k q_ik k_jk exp(G_ik - G_jk), j <= i within sub-chunk a. The exponent
  // is clamped at 0 (reached only above the diagonal, which the mask then zeroes) so nothing overflows.
  const at::Tensor pairwise = (Gsub.unsqueeze(-2) - Gsub.unsqueeze(-3)).clamp_max(0).exp();  // [B,H,n,NC,c,c,K]
  const at::Tensor Adiag = at::matmul(pairwise * ksub.unsqueeze(-3), qsub.permute({0, 1, 2, 4, 5, 6, 3}))
                               .permute({0, 1, 2, 3, 6, 4, 5})
                               .masked_fill(detail::causal_mask(c, q).logical_not(), 0);  // [B,H,n,NC,G,c,c]
  at::Tensor o = at::matmul(Adiag.reshape({B, H, n, NC, G * c, c}), vsub)
                     .view({B, H, n, NC, G, c, V})
                     .permute({0, 1, 2, 4, 3, 5, 6})
                     .reshape({B, H, n, G * C, V});
  if (NC == 1) return o;

  // Off-diagonal blocks against key sub-chunks b = 0..NC-2 (the last one has no later query sub-chunk).
  const int64_t NB = NC - 1;
  const at::Tensor Gend = Gsub.narrow(3, 0, NB).select(-2, c - 1);  // [B,H,n,NB,K]
  const at::Tensor kdec = ksub.narrow(3, 0, NB) * (Gend.unsqueeze(-2) - Gsub.narrow(3, 0, NB)).exp();
  // q_a (.) exp(G_a - G_end(b)) for every (b, a): [B,H,n,NB,G,NC,c,K]; blocks a <= b are masked below
  // (their exponent is clamped so that nothing overflows there).
  const at::Tensor qdec = qsub.unsqueeze(3) *
                          (Gsub.unsqueeze(3).unsqueeze(3) - Gend.view({B, H, n, NB, 1, 1, 1, K})).clamp_max(0).exp();
  const at::Tensor block_mask = at::arange(NC, q.options()).view({1, NC}) >
                                at::arange(NB, q.options()).view({NB, 1});  // [NB, NC]: a > b
  const at::Tensor Aoff = at::matmul(qdec.view({B, H, n, NB, G * NC * c, K}), kdec.transpose(-1, -2))
                              .view({B, H, n, NB, G, NC, c, c})
                              .mul(block_mask.view({NB, 1, NC, 1, 1}).to(q.scalar_type()));
  return o + at::matmul(Aoff.view({B, H, n, NB, G * C, c}), vsub.narrow(3, 0, NB)).sum(3);
}

CoreResult chunked(const Problem& p, at::Tensor h, const LinearAttentionOptions& opt) {
  const int64_t C = opt.chunk_size;
  TORCH_CHECK(C >= 1, "linear_attention: chunk_size must be >= 1");
  const int64_t c = p.gate == Gate::channel ? std::min(opt.sub_chunk_size, C) : C;
  TORCH_CHECK(c >= 1 && C % c == 0, "linear_attention: sub_chunk_size ", c, " must divide chunk_size ", C);
  const detail::ChunkLayout layout(p.B, p.T, p.Hkv, p.G, C);
  const int64_t N = layout.chunks(), Vp = p.v.size(-1);

  const at::Tensor q = layout.queries(p.q);  // [B,Hkv,N,G*C,K]
  const at::Tensor k = layout.keys(p.k);     // [B,Hkv,N,C,K]
  const at::Tensor v = layout.keys(p.v);     // [B,Hkv,N,C,V']
  at::Tensor Gc;                             // per-chunk inclusive cumsum: [B,Hkv,N,C] or [B,Hkv,N,C,K]
  if (p.gate == Gate::scalar) Gc = layout.scalars(p.g).cumsum(-1);
  if (p.gate == Gate::channel) Gc = layout.keys(p.g).cumsum(-2);

  // The largest temporaries per chunk: the decayed queries against every key sub-chunk and the pairwise
  // decays of the diagonal blocks (per-channel gates), or the C x C scores; plus the chunk's start state.
  const int64_t scores = p.gate == Gate::channel ? (C / c - 1) * p.G * C * p.K + C * c * p.K : p.G * C * C;
  const int64_t slab = detail::chunks_per_slab(p.B * p.Hkv * (scores + p.K * Vp), N);
  const auto qs = q.split(slab, 2), ks = k.split(slab, 2), vs = v.split(slab, 2);
  std::vector<at::Tensor> Gs;
  if (Gc.defined()) Gs = Gc.split(slab, 2);
  const at::Tensor causal = detail::causal_mask(C, p.q);

  std::vector<at::Tensor> outs;
  outs.reserve(qs.size());
  for (size_t s = 0; s < qs.size(); ++s) {
    const int64_t n = ks[s].size(2);
    // State contributions of each chunk and the decay across each chunk.
    at::Tensor kdecayed = ks[s], qdecayed = qs[s], chunk_decay;
    if (p.gate == Gate::scalar) {
      const at::Tensor last = Gs[s].narrow(-1, C - 1, 1);  // [B,Hkv,n,1]
      kdecayed = ks[s] * (last - Gs[s]).exp().unsqueeze(-1);
      chunk_decay = last.exp().unsqueeze(-1);  // [B,Hkv,n,1,1]
      qdecayed = (qs[s].view({p.B, p.Hkv, n, p.G, C, p.K}) * Gs[s].exp().unsqueeze(3).unsqueeze(-1))
                     .view({p.B, p.Hkv, n, p.G * C, p.K});
    } else if (p.gate == Gate::channel) {
      const at::Tensor last = Gs[s].narrow(-2, C - 1, 1);  // [B,Hkv,n,1,K]
      kdecayed = ks[s] * (last - Gs[s]).exp();
      chunk_decay = last.exp().transpose(-1, -2);  // [B,Hkv,n,K,1]
      qdecayed = (qs[s].view({p.B, p.Hkv, n, p.G, C, p.K}) * Gs[s].exp().unsqueeze(3))
                     .view({p.B, p.Hkv, n, p.G * C, p.K});
    }
    const auto contributions = at::matmul(kdecayed.transpose(-1, -2), vs[s]).unbind(2);  // n x [B,Hkv,K,V']
    std::vector<at::Tensor> decays;
    if (chunk_decay.defined()) decays = chunk_decay.unbind(2);
    std::vector<at::Tensor> starts;
    starts.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      starts.push_back(h);
      h = decays.empty() ? h + contributions[i] : at::addcmul(contributions[i], h, decays[i]);
    }
    const at::Tensor inter = at::matmul(qdecayed, at::stack(starts, 2));  // [B,Hkv,n,G*C,V']
    const at::Tensor intra = p.gate == Gate::channel
                                 ? intra_channel(qs[s], ks[s], vs[s], Gs[s], p.G, c)
                                 : intra_scalar(qs[s], ks[s], vs[s], Gc.defined() ? Gs[s] : at::Tensor(), causal, p.G);
    outs.push_back(inter + intra);
  }
  const at::Tensor o = outs.size() == 1 ? outs.front() : at::cat(outs, 2);
  return {layout.merge_queries(o), h};
}

}  // namespace

LinearAttentionOutput linear_attention(const LinearAttentionInputs& inputs, const LinearState& initial,
                                       const LinearAttentionOptions& options) {
  const Problem p = prepare(inputs, options);
  at::Tensor h0 = initial_state(initial, p, options);
  CoreResult r;
  switch (options.form) {
    case MixerForm::parallel: r = parallel(p, h0); break;
    case MixerForm::chunked: r = chunked(p, std::move(h0), options); break;
    case MixerForm::recurrent: r = recurrent(p, std::move(h0)); break;
  }
  return finish(std::move(r), p, options, inputs.q.scalar_type());
}

}  // namespace linearize::kernels
