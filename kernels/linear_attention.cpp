#include "kernels/linear_attention.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/chunk_layout.h"
#include "kernels/cpu_loops.h"
#include "kernels/gla_chunk_terms.h"

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

// The validated problem in the compute dtype. Each form applies the scale to q where it copies q anyway
// (the chunked form in its chunk layout copy); v carries an extra column of ones when normalising, so the
// normaliser z rides along as the state's last column.
struct Problem {
  at::Tensor q, k, v, g;  // g: [B,T,Hkv] (scalar) or [B,T,Hkv,K] (channel), undefined for none
  double scale = 1;
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
  p.scale = opt.scale.value_or(1.0 / std::sqrt(static_cast<double>(p.K)));
  p.q = in.q.to(dtype);
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

// ---- recurrent: S_t = diag(exp g_t) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t ----

// The fused CPU step (decode, no autograd): per kv head and token one detail::gla_token, which reads and
// writes the state [K, V'] once (kernels/cpu_loops.h). Sizes as in Problem;
// all arrays contiguous in the Problem's layouts; `a` the decays exp(g) (null without a gate); the first
// token reads the state from h0, every token writes it to h (no separate copy of the caller's state);
// o [B,T,Hq,V'] written.
template <typename T>
LINEARIZE_INLINE void recurrent_heads(const T* q, const T* k, const T* v, const T* a, const T* h0, T* h, T* o,
                                      int64_t begin, int64_t end, int64_t T_len, int64_t Hkv, int64_t G, int64_t K,
                                      int64_t Vp, Gate gate, T scale) {
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / Hkv, head = bh % Hkv;
    T* S = h + bh * K * Vp;
    for (int64_t t = 0; t < T_len; ++t) {
      const T* previous = t == 0 ? h0 + bh * K * Vp : S;
      const int64_t kv_row = (b * T_len + t) * Hkv + head;
      const T* kt = k + kv_row * K;
      const T* vt = v + kv_row * Vp;
      const T* qt = q + kv_row * G * K;  // the group's G query heads, [G, K]
      T* ot = o + kv_row * G * Vp;       // [G, V']
      detail::gla_token(qt, kt, vt, gate == Gate::channel ? a + kv_row * K : nullptr,
                        gate == Gate::scalar ? a[kv_row] : T(1), previous, S, ot, G, K, Vp, scale);
    }
  }
}
LINEARIZE_MULTIVERSION void recurrent_range(const float* q, const float* k, const float* v, const float* a,
                                            const float* h0, float* h, float* o, int64_t begin, int64_t end,
                                            int64_t T_len, int64_t Hkv, int64_t G, int64_t K, int64_t Vp, Gate gate,
                                            float scale) {
  recurrent_heads(q, k, v, a, h0, h, o, begin, end, T_len, Hkv, G, K, Vp, gate, scale);
}
LINEARIZE_MULTIVERSION void recurrent_range(const double* q, const double* k, const double* v, const double* a,
                                            const double* h0, double* h, double* o, int64_t begin, int64_t end,
                                            int64_t T_len, int64_t Hkv, int64_t G, int64_t K, int64_t Vp, Gate gate,
                                            double scale) {
  recurrent_heads(q, k, v, a, h0, h, o, begin, end, T_len, Hkv, G, K, Vp, gate, scale);
}

// overwrite: h0 is this call's own (nothing else holds it) and the new state may be written over it.
CoreResult recurrent_fused(const Problem& p, const at::Tensor& h0, bool overwrite) {
  const at::Tensor q = p.q.contiguous(), k = p.k.contiguous(), v = p.v.contiguous();
  const at::Tensor a = p.gate == Gate::none ? at::Tensor() : p.g.exp().contiguous();  // one vectorised exp
  const at::Tensor h_in = h0.contiguous();
  // gla_token reads each state element before it writes it, so h may be h_in.
  at::Tensor h = overwrite && h_in.is_same(h0) ? h_in : at::empty_like(h_in);
  const int64_t Vp = v.size(-1);
  at::Tensor o = at::empty({p.B, p.T, p.Hq, Vp}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_attention_recurrent", [&] {
    // A head's state row by row is the unit of work: heads spread over the threads.
    at::parallel_for(0, p.B * p.Hkv, 1, [&](int64_t begin, int64_t end) {
      recurrent_range(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                      a.defined() ? a.const_data_ptr<scalar_t>() : nullptr, h_in.const_data_ptr<scalar_t>(),
                      h.mutable_data_ptr<scalar_t>(),
                      o.mutable_data_ptr<scalar_t>(), begin, end, p.T, p.Hkv, p.G, p.K, Vp, p.gate,
                      static_cast<scalar_t>(p.scale));
    });
  });
  return {o, h};
}

CoreResult recurrent(const Problem& p, at::Tensor h, bool overwrite) {
  const bool needs_grad = at::GradMode::is_enabled() && (p.q.requires_grad() || p.k.requires_grad() || p.v.requires_grad() ||
                                                         (p.g.defined() && p.g.requires_grad()) || h.requires_grad());
  if (p.q.is_cpu() && !needs_grad) return recurrent_fused(p, h, overwrite);
  // unbind, not select in a loop: select's backward would allocate a full-size gradient per token.
  const auto qs = (p.q * p.scale).view({p.B, p.T, p.Hkv, p.G, p.K}).unbind(1);
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
  const at::Tensor q = (p.q * p.scale).view({p.B, p.T, p.Hkv, p.G, p.K}).permute({0, 2, 3, 1, 4});  // [B,Hkv,G,T,K]
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

// ---- chunked (docs/recipes.md#three-forms). Per chunk n, with G the per-chunk inclusive cumsum of the log
// gates (reset at each chunk) and h_n the state at its start:
//   o_n = (Q (.) exp G) h_n + A_n V_n,   h_{n+1} = diag(exp G_last) h_n + (K (.) exp(G_last - G))^T V_n.
// Nothing but h_n depends on earlier chunks, so the decayed q and k and the intra-chunk output A_n V_n are
// batched over a slab of chunks, and the sequential pass is two baddbmm per chunk.

// What the state pass needs for a slab of n chunks (BH = B * Hkv).
struct ChunkTerms {
  at::Tensor qdecayed;  // [BH,n,G*C,K]: q (.) exp(G)
  at::Tensor kdecayed;  // [BH,n,C,K]: k (.) exp(G_last - G)
  at::Tensor decay;     // exp(G_last): [BH,n,K,1] (per channel) or [BH,n,1,1]; undefined without a gate
  at::Tensor intra;     // [BH,n,G*C,V']: A V
};

// A scalar gate (or none), Gc [BH,n,C] or undefined: A = (Q K^T) (.) exp(G_i - G_j) on j <= i.
ChunkTerms scalar_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& Gc,
                        int64_t G) {
  const int64_t BH = k.size(0), n = k.size(1), C = k.size(2), K = k.size(3);
  const at::Tensor A = at::matmul(q, k.transpose(-1, -2));  // [BH,n,G*C,C]
  const at::Tensor causal = detail::causal_mask(C, q);
  if (!Gc.defined()) return {q, k, {}, at::matmul(A.masked_fill(causal.logical_not().repeat({G, 1}), 0), v)};
  const at::Tensor D = (Gc.unsqueeze(-1) - Gc.unsqueeze(-2)).masked_fill(causal.logical_not(), kNegInf).exp();
  const at::Tensor last = Gc.narrow(-1, C - 1, 1);  // [BH,n,1]
  return {(q.view({BH, n, G, C, K}) * Gc.exp().unsqueeze(2).unsqueeze(-1)).view({BH, n, G * C, K}),
          k * (last - Gc).exp().unsqueeze(-1), last.exp().unsqueeze(-1),
          at::matmul((A.view({BH, n, G, C, C}) * D.unsqueeze(2)).view({BH, n, G * C, C}), v)};
}

// self += a @ b (batched) in place. Under autocast a product comes out in its dtype (bf16) while an accumulator keeps
// fp32, and an in-place op is not autocast: baddbmm_ refuses mixed dtypes, so then the product is formed apart and
// added (the sum in self's dtype).
const at::Tensor& add_product_(const at::Tensor& self, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == self.scalar_type() && b.scalar_type() == self.scalar_type()) return self.baddbmm_(a, b);
  return self.add_(at::bmm(a, b));
}

// A per-channel gate g [BH,n,C,K]: fla's secondary chunking with sub-chunks of c tokens (gla_chunk_terms.h).
// Query sub-chunk a's intra-chunk output is its exact diagonal block times its own values plus, for a > 0,
// (qsub_a keys_a^T) times the values of sub-chunks 0..a-1.
ChunkTerms channel_terms(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, int64_t G,
                         int64_t c) {
  const int64_t BH = k.size(0), n = k.size(1), C = k.size(2), K = k.size(3), V = v.size(-1);
  const int64_t M = BH * n, NC = C / c;
  const auto terms = detail::gla_chunk_terms(q.view({M, G, C, K}), k.view({M, C, K}), g.view({M, C, K}), c);
  ChunkTerms t;
  t.qdecayed = terms.qdecayed.view({BH, n, G * C, K});
  t.kdecayed = terms.kdecayed.view({BH, n, C, K});
  t.decay = terms.decay.view({BH, n, K, 1});
  at::Tensor intra = at::matmul(terms.diagonal.view({M, NC, G * c, c}), v.view({M, NC, c, V}));  // [M,NC,G*c,V]
  const at::Tensor vrows = v.view({M, C, V});
  for (int64_t a = 1; a < NC; ++a) {
    const at::Tensor keys = terms.keys.narrow(1, detail::sub_chunk_keys_offset(a, c), a * c);
    const at::Tensor scores = at::bmm(terms.qsub.select(1, a).view({M, G * c, K}), keys.transpose(1, 2));
    add_product_(intra.select(1, a), scores, vrows.narrow(1, 0, a * c));
  }
  t.intra = intra.view({M, NC, G, c, V}).transpose(1, 2).reshape({BH, n, G * C, V});
  return t;
}

// The largest divisor of C that is at most the requested sub-chunk (C = 64 and 16: fla's 4 x 16; C = 40: 10).
int64_t sub_chunk_for(int64_t C, int64_t requested) {
  TORCH_CHECK(requested >= 1, "linear_attention: sub_chunk_size must be >= 1, got ", requested);
  int64_t c = std::min(requested, C);
  while (C % c != 0) --c;
  return c;
}

CoreResult chunked(const Problem& p, at::Tensor h, const LinearAttentionOptions& opt) {
  const int64_t C = opt.chunk_size;
  TORCH_CHECK(C >= 1, "linear_attention: chunk_size must be >= 1");
  const detail::ChunkLayout layout(p.B, p.T, p.Hkv, p.G, C);
  const int64_t N = layout.chunks(), BH = p.B * p.Hkv, K = p.K, Vp = p.v.size(-1);
  const int64_t c = p.gate == Gate::channel ? sub_chunk_for(C, opt.sub_chunk_size) : C;
  // A slab's temporaries are a few copies of its q, k, v, gates and output (the scalar-gate scores add
  // G*C*C). Small slabs (one chunk of all heads at H = 8, d = 128) are the fastest (scripts/bench.sh
  // kernels): the temporaries stay in cache and their allocations are reused.
  const int64_t per_chunk = BH * C * (p.G * (2 * K + 2 * Vp + C) + 5 * K + Vp);
  const int64_t slab = detail::chunks_per_slab(per_chunk, N, int64_t{1} << 18);

  // Without autograd each chunk's output goes straight into the output buffer and the state is updated in
  // place: no full-size temporaries, whose page faults made long sequences slower per token. With autograd,
  // one stack at the end (writes into slices of one buffer would make every chunk's backward copy the whole
  // output gradient) and a fresh state per chunk (the previous one is saved for the backward).
  const bool record = detail::records_grad({p.q, p.k, p.v, p.g, h});
  h = h.reshape({BH, K, Vp});
  at::Tensor o;
  std::vector<at::Tensor> outs;  // with autograd: per chunk [B,C,Hkv,G,V'], stacked into the sequence layout
  if (record) {
    outs.reserve(N);
  } else {
    o = at::empty({p.B, N * C, p.Hq, Vp}, p.q.options());
    h = h.clone();  // may be a view of the caller's initial state
  }
  for (int64_t first = 0; first < N; first += slab) {
    const int64_t n = std::min(slab, N - first);
    const at::Tensor q = layout.queries(p.q, first, n, p.scale).view({BH, n, p.G * C, K});
    const at::Tensor k = layout.keys(p.k, first, n).view({BH, n, C, K});
    const at::Tensor v = layout.keys(p.v, first, n).view({BH, n, C, Vp});
    ChunkTerms t;
    if (p.gate == Gate::channel) {
      t = channel_terms(q, k, v, layout.keys(p.g, first, n).view({BH, n, C, K}), p.G, c);
    } else {
      const at::Tensor Gc =
          p.gate == Gate::scalar ? layout.scalars(p.g, first, n).view({BH, n, C}).cumsum(2) : at::Tensor();
      t = scalar_terms(q, k, v, Gc, p.G);
    }
    // unbind, not select in the loop: select's backward would allocate a full-size gradient per chunk.
    const auto qs = t.qdecayed.unbind(1), ks = t.kdecayed.unbind(1), vs = v.unbind(1), intras = t.intra.unbind(1);
    std::vector<at::Tensor> decays;
    if (t.decay.defined()) decays = t.decay.unbind(1);
    for (int64_t i = 0; i < n; ++i) {
      const auto as_sequence = [&](const at::Tensor& x) {  // [BH,G*C,V'] -> [B,C,Hkv,G,V']
        return x.view({p.B, p.Hkv, p.G, C, Vp}).permute({0, 3, 1, 2, 4});
      };
      if (record) {
        outs.push_back(as_sequence(at::baddbmm(intras[i], qs[i], h)));
        h = at::baddbmm(decays.empty() ? h : h * decays[i], ks[i].transpose(1, 2), vs[i]);
      } else {
        o.narrow(1, (first + i) * C, C).view({p.B, C, p.Hkv, p.G, Vp}).copy_(as_sequence(add_product_(intras[i], qs[i], h)));
        if (!decays.empty()) h.mul_(decays[i]);
        add_product_(h, ks[i].transpose(1, 2), vs[i]);
      }
    }
  }
  if (record) o = at::stack(outs, 1).view({p.B, N * C, p.Hq, Vp});
  return {o.narrow(1, 0, p.T), h.view({p.B, p.Hkv, K, Vp})};
}

LinearAttentionOutput run(const LinearAttentionInputs& inputs, LinearState initial, bool consumed,
                          const LinearAttentionOptions& options) {
  const Problem p = prepare(inputs, options);
  at::Tensor h0 = initial_state(initial, p, options);
  initial = {};
  // The state may be overwritten only if h0 is its own storage's one handle (not a copy made above, nor
  // a state someone else kept a handle to).
  const bool overwrite = consumed && h0.use_count() == 1 && h0.storage().use_count() == 1;
  CoreResult r;
  switch (options.form) {
    case MixerForm::parallel: r = parallel(p, h0); break;
    case MixerForm::chunked: r = chunked(p, std::move(h0), options); break;
    case MixerForm::recurrent: r = recurrent(p, std::move(h0), overwrite); break;
  }
  return finish(std::move(r), p, options, inputs.q.scalar_type());
}

}  // namespace

LinearAttentionOutput linear_attention(const LinearAttentionInputs& inputs, const LinearState& initial,
                                       const LinearAttentionOptions& options) {
  return run(inputs, initial, false, options);
}

LinearAttentionOutput linear_attention(const LinearAttentionInputs& inputs, LinearState&& initial,
                                       const LinearAttentionOptions& options) {
  return run(inputs, std::move(initial), true, options);
}

}  // namespace linearize::kernels
