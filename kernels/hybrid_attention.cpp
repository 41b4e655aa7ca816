#include "kernels/hybrid_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels/cpu_loops.h"
#include "kernels/softmax_attention.h"
#include "kernels/window_attention.h"

namespace linearize::kernels {
namespace {

at::ScalarType compute_type(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// A window cache oldest key first (liger_decode_step leaves it a ring whose oldest key is at ring_start).
at::Tensor in_order(const at::Tensor& cache, int64_t ring_start) {
  if (ring_start == 0) return cache;
  const int64_t n = cache.size(1);
  return at::cat({cache.narrow(1, ring_start, n - ring_start), cache.narrow(1, 0, ring_start)}, 1);
}

// The keys the window branch of this call sees: the cached ones, then the call's own.
struct WindowKeys {
  at::Tensor k, v;
  int64_t cached = 0;
};

WindowKeys window_keys(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const HybridState& initial,
                       const HybridAttentionOptions& opt) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "hybrid attention: q, k, v must be [B, T, H, D]");
  const int64_t B = q.size(0), T = q.size(1), Hkv = k.size(2);
  TORCH_CHECK(T >= 1 && k.size(0) == B && k.size(1) == T && v.size(0) == B && v.size(1) == T && v.size(2) == Hkv &&
                  k.size(3) == q.size(3) && Hkv >= 1 && q.size(2) % Hkv == 0,
              "hybrid attention: q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,V] with Hq a multiple of Hkv");
  TORCH_CHECK(opt.window >= 1 && opt.chunk_size >= 1, "hybrid attention: window and chunk_size must be positive");
  if (!initial.k.defined()) return {k, v, 0};
  TORCH_CHECK(initial.k.size(1) <= opt.window && initial.v.size(1) == initial.k.size(1),
              "hybrid attention: the window cache holds at most `window` keys");
  return {at::cat({in_order(initial.k, initial.ring_start), k}, 1), at::cat({in_order(initial.v, initial.ring_start), v}, 1),
          initial.k.size(1)};
}

// The next cache: the last `window` keys. clone: a view would pin the whole prompt's keys for the decode.
void keep_last_keys(const WindowKeys& keys, int64_t window, HybridState& state) {
  const int64_t n = keys.k.size(1), keep = std::min(window, n);
  state.k = keys.k.narrow(1, n - keep, keep).clone();
  state.v = keys.v.narrow(1, n - keep, keep).clone();
}

double window_scale(std::optional<double> scale, int64_t head_dim) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

// The window branch in the call's form: one block of all queries (the full masked matrix), blocks of C
// queries, or one query at a time (decode).
WindowSoftmaxParts window_branch(const at::Tensor& q, const WindowKeys& keys, const HybridAttentionOptions& opt) {
  const int64_t T = q.size(1);
  const int64_t block = opt.form == MixerForm::parallel ? T : opt.form == MixerForm::chunked ? opt.chunk_size : 1;
  TORCH_CHECK(!opt.key_valid.defined() || keys.cached == 0, "hybrid attention: a padded batch runs stateless");
  return window_softmax_parts(q, keys.k, keys.v, keys.cached, 0, opt.window, window_scale(opt.scale, q.size(3)), block,
                              opt.key_valid);
}

LinearAttentionOptions linear_options(const HybridAttentionOptions& opt) {
  LinearAttentionOptions lo;
  lo.form = opt.form;
  lo.chunk_size = opt.chunk_size;
  lo.scale = 1.0;  // both hybrids use phi_q.phi_k unscaled (docs/recipes.md#liger-gla, docs/recipes.md#lolcats)
  return lo;
}

// [B, n, Hkv, V] -> [B, n, Hf, V + 1]: the values of the keys entering the LoLCATs state, per feature head,
// with a ones column whose running sum is the shared normaliser's linear part.
at::Tensor values_with_ones(const at::Tensor& v, int64_t feature_heads) {
  const auto per_head = feature_heads == v.size(2) ? v : v.repeat_interleave(feature_heads / v.size(2), 2);
  return at::cat({per_head, at::ones_like(per_head.narrow(-1, 0, 1))}, -1);
}

// LoLCATs' linear numerator and denominator (the last channel) as the quadratic masked formula: query i
// (relative position n + i, n keys cached) reads S0 and every key j <= n + i - window of the cache and
// the call. Returns them and the state after the call.
std::pair<at::Tensor, LinearState> lolcats_linear_parallel(const LolcatsAttentionInputs& in, const WindowKeys& keys,
                                                           const LinearState& initial, int64_t window,
                                                           const at::Tensor& key_valid) {
  const auto compute = compute_type(in.q);
  const int64_t T = in.q.size(1), Hq = in.q.size(2), S = keys.k.size(1);
  const auto phi_k = zero_padded_tokens(in.phi_k(keys.k.to(compute)), key_valid);  // [B, S, Hf, F]
  const int64_t Hf = phi_k.size(2), F = phi_k.size(3);
  TORCH_CHECK(Hf >= 1 && Hq % Hf == 0, "lolcats_attention: phi_k must give Hq or Hkv feature heads");
  const auto v1 = values_with_ones(keys.v.to(compute), Hf);  // [B, S, Hf, V + 1]
  // Per query head, [B, Hq, *, *].
  const auto per_query_head = [Hq](const at::Tensor& x) { return x.repeat_interleave(Hq / x.size(2), 2).transpose(1, 2); };
  const auto qh = in.phi_q.to(compute).transpose(1, 2);
  auto scores = at::matmul(qh, per_query_head(phi_k).transpose(-1, -2));  // [B, Hq, T, S]
  const auto opts = at::TensorOptions().dtype(at::kLong).device(in.q.device());
  const auto qpos = at::arange(keys.cached, keys.cached + T, opts).unsqueeze(1);
  const auto older = at::arange(S, opts).unsqueeze(0).le(qpos - window);
  scores = scores.masked_fill(older.logical_not(), 0.0);
  auto lin = at::matmul(scores, per_query_head(v1));  // [B, Hq, T, V + 1]
  const int64_t entered = std::max<int64_t>(0, S - window);  // keys j <= last query - window
  auto state = at::matmul(phi_k.narrow(1, 0, entered).permute({0, 2, 3, 1}), v1.narrow(1, 0, entered).transpose(1, 2));
  if (!initial.empty()) {
    TORCH_CHECK(initial.kv.size(1) == Hf && initial.kv.size(2) == F, "lolcats_attention: the state must be [B, Hf, F, V+1]");
    lin = lin + at::matmul(qh, per_query_head(initial.kv.to(compute).transpose(1, 2)));
    state = state + initial.kv.to(compute);
  }
  return {lin.transpose(1, 2), LinearState{state, {}}};
}

// ---- the fused decode steps: one task per kv head ----

enum class Hybrid { liger, lolcats };

// Sizes; slot: the ring index of the oldest cached key, which the new one overwrites.
struct StepLayout {
  int64_t Hkv, G, D, V, F, W, slot, Hf;
};

// Contiguous arrays: q [B,Hq,D], phi_q [B,Hq,F], k_new [B,Hkv,D], v_new [B,Hkv,V], cache [B,W,Hkv,D|V], o [B,Hq,V].
// Liger: phi_k / decay [B,Hkv,F] of the new key, S [B,Hkv,F,V]. LoLCATs: phi_k [B,Hf,F] of the key leaving
// the window (the oldest), S [B,Hf,F,V+1], factor [Hq] = sigmoid(w_h).
template <typename Acc, typename KV>
struct StepArrays {
  const Acc *q, *phi_q, *phi_k, *decay, *factor;
  const KV *k_new, *v_new;
  KV *cache_k, *cache_v;
  Acc *S, *o;
};

template <Hybrid kKind, typename Acc, typename KV, bool kBf16>
LINEARIZE_INLINE void step_heads(const StepArrays<Acc, KV>& a, const StepLayout& L, Acc scale, int64_t begin, int64_t end) {
  const int64_t G = L.G, D = L.D, V = L.V, F = L.F, W = L.W, Hkv = L.Hkv;
  const int64_t Vs = kKind == Hybrid::lolcats ? V + 1 : V;  // state columns: LoLCATs carries the normaliser
  std::vector<Acc> scratch(W + Vs + G * Vs + V);
  Acc* scores = scratch.data();
  Acc* entering = scores + W;     // the value entering the linear state, [Vs]
  Acc* linear = entering + Vs;    // the G query heads' linear parts, [G, Vs]
  Acc* numerator = linear + G * Vs;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / Hkv, h = bh % Hkv;
    const auto key = [&](int64_t j) { return a.cache_k + ((b * W + j) * Hkv + h) * D; };
    const auto value = [&](int64_t j) { return a.cache_v + ((b * W + j) * Hkv + h) * V; };
    const Acc* phi_q = a.phi_q + bh * G * F;
    if constexpr (kKind == Hybrid::liger) {  // GLA over every key: the new one enters, decayed state
      for (int64_t i = 0; i < V; ++i) entering[i] = detail::load<Acc, KV, kBf16>(a.v_new + bh * V, i);
      Acc* state = a.S + bh * F * V;
      detail::gla_token(phi_q, a.phi_k + bh * F, entering, a.decay + bh * F, Acc(1), state, state, linear, G, F, V, Acc(1));
    } else {  // the oldest key leaves the window and enters the state [v, 1], read before it is overwritten
      for (int64_t i = 0; i < V; ++i) entering[i] = detail::load<Acc, KV, kBf16>(value(L.slot), i);
      entering[V] = 1;
      if (L.Hf == Hkv) {  // one feature head per kv head, read by its G query heads
        Acc* state = a.S + bh * F * Vs;
        detail::gla_token(phi_q, a.phi_k + bh * F, entering, static_cast<const Acc*>(nullptr), Acc(1), state, state, linear, G, F, Vs, Acc(1));
      } else {  // a feature head per query head
        for (int64_t g = 0; g < G; ++g) {
          Acc* state = a.S + (bh * G + g) * F * Vs;
          detail::gla_token(phi_q + g * F, a.phi_k + (bh * G + g) * F, entering, static_cast<const Acc*>(nullptr), Acc(1), state, state,
                            linear + g * Vs, int64_t{1}, F, Vs, Acc(1));
        }
      }
    }
    std::copy(a.k_new + bh * D, a.k_new + (bh + 1) * D, key(L.slot));
    std::copy(a.v_new + bh * V, a.v_new + (bh + 1) * V, value(L.slot));
    for (int64_t g = 0; g < G; ++g) {  // the window softmax over the ring (keys n - W < j <= n), c = row max
      const Acc* qg = a.q + (bh * G + g) * D;
      Acc c = -std::numeric_limits<Acc>::infinity();
      for (int64_t j = 0; j < W; ++j) c = std::max(c, scores[j] = scale * detail::dot<Acc, KV, kBf16>(qg, key(j), D));
      Acc denominator = 0;
      std::fill(numerator, numerator + V, Acc(0));
      for (int64_t j = 0; j < W; ++j) {
        const Acc w = std::exp(scores[j] - c);
        denominator += w;
        const KV* vj = value(j);
        for (int64_t i = 0; i < V; ++i) numerator[i] += w * detail::load<Acc, KV, kBf16>(vj, i);
      }
      Acc* out = a.o + (bh * G + g) * V;
      const Acc* lin = linear + g * Vs;
      if constexpr (kKind == Hybrid::liger) {  // 0.5 o_swa + 0.5 o_lin
        for (int64_t i = 0; i < V; ++i) out[i] = Acc(0.5) * numerator[i] / denominator + Acc(0.5) * lin[i];
      } else {  // one normaliser: (f num + lin) / (f den + lin_den)
        const Acc f = a.factor[h * G + g], shared = f * denominator + lin[V];
        for (int64_t i = 0; i < V; ++i) out[i] = (f * numerator[i] + lin[i]) / shared;
      }
    }
  }
}

#define LINEARIZE_STEP(name, kind, Acc, KV, kBf16)                                                            \
  LINEARIZE_MULTIVERSION void name(const StepArrays<Acc, KV>& a, const StepLayout& L, Acc scale, int64_t begin, \
                                   int64_t end) {                                                              \
    step_heads<kind, Acc, KV, kBf16>(a, L, scale, begin, end);                                                 \
  }
LINEARIZE_STEP(liger_fp32, Hybrid::liger, float, float, false)
LINEARIZE_STEP(liger_fp64, Hybrid::liger, double, double, false)
LINEARIZE_STEP(liger_bf16, Hybrid::liger, float, std::uint16_t, true)
LINEARIZE_STEP(liger_fp16, Hybrid::liger, float, std::uint16_t, false)
LINEARIZE_STEP(lolcats_fp32, Hybrid::lolcats, float, float, false)
LINEARIZE_STEP(lolcats_fp64, Hybrid::lolcats, double, double, false)
LINEARIZE_STEP(lolcats_bf16, Hybrid::lolcats, float, std::uint16_t, true)
LINEARIZE_STEP(lolcats_fp16, Hybrid::lolcats, float, std::uint16_t, false)
#undef LINEARIZE_STEP

// Whether a fused step takes this call: one token, CPU, no autograd, a full window, the linear state in the
// compute dtype and a cache the loops read (fp64 with fp64; fp32, bf16 or fp16 otherwise). Makes the state
// contiguous (once: the steps keep it so).
bool step_applies(const std::vector<at::Tensor>& inputs, const at::Tensor& q, HybridState& state, int64_t window) {
  if (q.dim() != 4 || q.size(1) != 1 || state.linear.empty() || !state.k.defined() || state.k.size(1) != window) return false;
  const bool grad = at::GradMode::is_enabled();
  for (const at::Tensor* t : {&state.k, &state.v, &state.linear.kv})
    if (!t->is_cpu() || (grad && t->requires_grad())) return false;
  for (const at::Tensor& t : inputs)
    if (!t.defined() || !t.is_cpu() || (grad && t.requires_grad())) return false;
  const auto compute = compute_type(q), cache = state.k.scalar_type();
  const bool readable = compute == at::kDouble ? cache == at::kDouble : (cache == at::kFloat || cache == at::kBFloat16 || cache == at::kHalf);
  if (!readable || state.v.scalar_type() != cache || state.linear.kv.scalar_type() != compute) return false;
  for (at::Tensor* t : {&state.linear.kv, &state.k, &state.v}) *t = t->contiguous();
  return true;
}

// A tensor's elements as T (16-bit types as their bits); null for an undefined tensor.
template <typename T>
T* data_as(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// Runs the fused step over the kv heads and advances the ring. Every Acc input already contiguous in `compute`.
template <Hybrid kKind>
at::Tensor run_step(const at::Tensor& q, const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& decay,
                    const at::Tensor& factor, const at::Tensor& k, const at::Tensor& v, HybridState& state,
                    const StepLayout& L, double scale) {
  const auto compute = q.scalar_type(), cache = state.k.scalar_type();
  const at::Tensor k_new = k.to(cache).contiguous(), v_new = v.to(cache).contiguous();
  at::Tensor o = at::empty({q.size(0), 1, q.size(2), L.V}, q.options());
  const auto run = [&](auto acc, auto kv, auto fn) {
    using Acc = decltype(acc);
    using KV = decltype(kv);
    const StepArrays<Acc, KV> a{data_as<const Acc>(q),       data_as<const Acc>(phi_q), data_as<const Acc>(phi_k),
                                data_as<const Acc>(decay),   data_as<const Acc>(factor), data_as<const KV>(k_new),
                                data_as<const KV>(v_new),    data_as<KV>(state.k),      data_as<KV>(state.v),
                                data_as<Acc>(state.linear.kv), data_as<Acc>(o)};
    // A kv head is the unit of work; tiny steps stay on the calling thread (~32K multiply-adds per task).
    const int64_t work = L.G * (L.W * (L.D + L.V) + 2 * L.F * (L.V + 1));
    at::parallel_for(0, q.size(0) * L.Hkv, std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, work)),
                     [&](int64_t begin, int64_t end) { fn(a, L, static_cast<Acc>(scale), begin, end); });
  };
  const bool liger = kKind == Hybrid::liger;
  if (compute == at::kDouble) {
    run(double{}, double{}, liger ? liger_fp64 : lolcats_fp64);
  } else if (cache == at::kFloat) {
    run(float{}, float{}, liger ? liger_fp32 : lolcats_fp32);
  } else if (cache == at::kBFloat16) {
    run(float{}, std::uint16_t{}, liger ? liger_bf16 : lolcats_bf16);
  } else {
    run(float{}, std::uint16_t{}, liger ? liger_fp16 : lolcats_fp16);
  }
  state.ring_start = (state.ring_start + 1) % L.W;
  return o;
}

}  // namespace

int64_t HybridState::bytes() const {
  int64_t total = linear.empty() ? 0 : linear.bytes();
  if (k.defined()) total += static_cast<int64_t>(k.nbytes() + v.nbytes());
  return total;
}

HybridAttentionOutput liger_attention(const LigerAttentionInputs& in, const HybridState& initial,
                                      const HybridAttentionOptions& opt) {
  const auto keys = window_keys(in.q, in.k, in.v, initial, opt);
  const auto win = window_branch(in.q, keys, opt);
  // A padded key writes nothing into the GLA state (left padding comes before every token, while the state is
  // still zero, so its decay changes nothing).
  auto lin = linear_attention({in.phi_q, zero_padded_tokens(in.phi_k, opt.key_valid), in.v, in.log_decay, {}}, initial.linear,
                              linear_options(opt));
  const auto o = 0.5 * (win.numerator / win.denominator.unsqueeze(-1)) + 0.5 * lin.o.to(compute_type(in.q));
  HybridAttentionOutput out{o.to(in.q.scalar_type()), {std::move(lin.state), {}, {}}};
  keep_last_keys(keys, opt.window, out.state);
  return out;
}

HybridAttentionOutput lolcats_attention(const LolcatsAttentionInputs& in, const HybridState& initial,
                                        const HybridAttentionOptions& opt) {
  const auto keys = window_keys(in.q, in.k, in.v, initial, opt);
  const int64_t T = in.q.size(1), Hq = in.q.size(2), V = in.v.size(3);
  TORCH_CHECK(in.phi_k, "lolcats_attention: phi_k (the key feature map) is required");
  TORCH_CHECK(in.window_factor.dim() == 1 && in.window_factor.size(0) == Hq, "lolcats_attention: window_factor must be [Hq]");
  const auto compute = compute_type(in.q);
  const auto win = window_branch(in.q, keys, opt);

  at::Tensor lin;
  HybridAttentionOutput out;
  if (opt.form == MixerForm::parallel) {
    std::tie(lin, out.state.linear) = lolcats_linear_parallel(in, keys, initial.linear, opt.window, opt.key_valid);
  } else {
    // Key j enters the state as query j + window arrives: query i reads the key at relative position
    // n + i - window, i.e. the first `count` keys of the window's key sequence after `pad` queries that
    // come before any key has left (zero features for those, not phi(0)).
    const int64_t pad = std::clamp<int64_t>(opt.window - keys.cached, 0, T), count = T - pad;
    const auto phi_k = zero_padded_tokens(in.phi_k(keys.k.narrow(1, 0, count).to(compute)), opt.key_valid);
    const auto v1 = values_with_ones(keys.v.narrow(1, 0, count).to(compute), phi_k.size(2));
    const auto pad_zeros = [pad](const at::Tensor& x) {
      if (pad == 0) return x;
      auto shape = x.sizes().vec();
      shape[1] = pad;
      return at::cat({at::zeros(shape, x.options()), x}, 1);
    };
    auto res = linear_attention({in.phi_q, pad_zeros(phi_k), pad_zeros(v1), {}, {}}, initial.linear, linear_options(opt));
    lin = res.o.to(compute);
    out.state.linear = std::move(res.state);
  }
  const auto f = at::sigmoid(in.window_factor.to(compute)).view({1, 1, Hq});
  const auto y = (f.unsqueeze(-1) * win.numerator + lin.narrow(-1, 0, V)) / (f * win.denominator + lin.select(-1, V)).unsqueeze(-1);
  out.o = y.to(in.q.scalar_type());
  keep_last_keys(keys, opt.window, out.state);
  return out;
}


at::Tensor liger_decode_step(const LigerAttentionInputs& in, HybridState& state, int64_t window, std::optional<double> scale) {
  if (!in.log_decay.defined() || in.log_decay.dim() != 4 ||
      !step_applies({in.q, in.k, in.v, in.phi_q, in.phi_k, in.log_decay}, in.q, state, window))
    return {};  // not a decode step on a full window, or not Liger's per-channel gates
  const at::Tensor& q = in.q;
  const int64_t B = q.size(0), Hq = q.size(2), D = q.size(3), Hkv = in.k.size(2), V = in.v.size(3), F = in.phi_q.size(3);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0 && in.k.sizes() == at::IntArrayRef({B, 1, Hkv, D}) &&
                  in.v.sizes() == at::IntArrayRef({B, 1, Hkv, V}) && in.phi_q.sizes() == at::IntArrayRef({B, 1, Hq, F}) &&
                  in.phi_k.sizes() == at::IntArrayRef({B, 1, Hkv, F}) && in.log_decay.sizes() == in.phi_k.sizes() &&
                  state.k.sizes() == at::IntArrayRef({B, window, Hkv, D}) &&
                  state.v.sizes() == at::IntArrayRef({B, window, Hkv, V}) &&
                  state.linear.kv.sizes() == at::IntArrayRef({B, Hkv, F, V}),
              "liger_decode_step: inputs and state disagree in shape");
  const auto compute = compute_type(q);
  const auto as_compute = [compute](const at::Tensor& t) { return t.to(compute).contiguous(); };
  const StepLayout L{Hkv, Hq / Hkv, D, V, F, window, state.ring_start, Hkv};
  return run_step<Hybrid::liger>(as_compute(q), as_compute(in.phi_q), as_compute(in.phi_k),
                                 in.log_decay.to(compute).exp().contiguous(), {}, in.k, in.v, state, L,
                                 window_scale(scale, D))
      .to(q.scalar_type());
}

at::Tensor lolcats_decode_step(const LolcatsAttentionInputs& in, HybridState& state, int64_t window,
                               std::optional<double> scale) {
  if (!in.phi_k || !step_applies({in.q, in.k, in.v, in.phi_q, in.window_factor}, in.q, state, window)) return {};
  const at::Tensor& q = in.q;
  const auto compute = compute_type(q);
  // The key leaving the window (the ring's oldest) through the key map: [B, 1, Hf, F].
  const auto leaving = in.phi_k(state.k.narrow(1, state.ring_start, 1).to(compute)).to(compute).contiguous();
  const int64_t B = q.size(0), Hq = q.size(2), D = q.size(3), Hkv = in.k.size(2), V = in.v.size(3), F = in.phi_q.size(3);
  const int64_t Hf = leaving.size(2);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0 && (Hf == Hq || Hf == Hkv) && in.k.sizes() == at::IntArrayRef({B, 1, Hkv, D}) &&
                  in.v.sizes() == at::IntArrayRef({B, 1, Hkv, V}) && in.phi_q.sizes() == at::IntArrayRef({B, 1, Hq, F}) &&
                  leaving.sizes() == at::IntArrayRef({B, 1, Hf, F}) && in.window_factor.sizes() == at::IntArrayRef({Hq}) &&
                  state.k.sizes() == at::IntArrayRef({B, window, Hkv, D}) &&
                  state.v.sizes() == at::IntArrayRef({B, window, Hkv, V}) &&
                  state.linear.kv.sizes() == at::IntArrayRef({B, Hf, F, V + 1}),
              "lolcats_decode_step: inputs and state disagree in shape");
  const auto as_compute = [compute](const at::Tensor& t) { return t.to(compute).contiguous(); };
  const StepLayout L{Hkv, Hq / Hkv, D, V, F, window, state.ring_start, Hf};
  return run_step<Hybrid::lolcats>(as_compute(q), as_compute(in.phi_q), leaving, {},
                                   at::sigmoid(in.window_factor.to(compute)).contiguous(), in.k, in.v, state, L,
                                   window_scale(scale, D))
      .to(q.scalar_type());
}

}  // namespace linearize::kernels
