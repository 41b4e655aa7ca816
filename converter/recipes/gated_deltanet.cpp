// Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv 2412.06464, eq. 10) on the source attention's
// projections, per kv head h:
//   S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t,
//   q_t, k_t = L2norm(SiLU(W_Q x_t)), L2norm(SiLU(W_K x_t)) per head (after the family's q/k norm; no RoPE:
//   the recurrence orders the tokens), v_t = W_V x_t (the source's values),
//   beta_t = sigmoid(x_t . w_beta + b_beta),                              the write strength,
//   log a_t = -exp(A_log) softplus(x_t . w_decay + dt_bias) <= 0,         Mamba-2's decay (as fla's layer),
// then the source's W_O. The kernel is kernels/delta_rule.h in its three forms. Scale 1 (fla divides by
// sqrt(d) and renormalises the output; here W_O reads the state's retrieval directly: with unit q = k,
// beta = 1 retrieves v exactly). At conversion w_beta = w_decay = 0, beta = beta_init, and
// a = exp(-softplus(dt_bias)) = 1 - decay_init: close to plain (delta-rule) linear attention, which stage 1
// then fits to the softmax layer's outputs. No short convolution and no output gate in this build.
#include <cmath>

#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

using names::kBetaBias, names::kBetaWeight, names::kDecayBias, names::kDecayLogScale, names::kDecayWeight;

// Position-free: the state carries the order, so no RoPE.
struct GatedDeltaNetProgram {
  static constexpr const char* kind = "gated-deltanet";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const auto h = o.project_heads(x);
    const auto unit = [&](const auto& t) { return o.l2_normalize(o.silu(o.fp32(t)), 1e-6); };  // fla's l2norm eps
    const auto xf = o.fp32(x);
    const auto beta = o.sigmoid(o.per_head(xf, kBetaWeight, kBetaBias));
    const auto log_decay = o.mul(o.neg(o.exp(o.head_param(kDecayLogScale))), o.softplus(o.per_head(xf, kDecayWeight, kDecayBias)));
    const recipes::Recurrence state{o.kv_heads(), o.head_dim(), o.head_dim(), o.heads() / o.kv_heads()};
    const auto out = o.delta_rule(unit(h.q), unit(h.k), h.v, beta, log_decay, state);
    o.capture(names::MixerCapture::o_lin, out);
    return o.project_output(out);
  }
};

}  // namespace

Recipe gated_deltanet_recipe() {
  Recipe r;
  r.name = "gated-deltanet";
  r.summary = "Gated DeltaNet on the source q,k,v (SiLU + L2-normed q,k), learned beta and Mamba-2 decay per kv head";
  r.params = {{"beta_init", 0.5, "write strength beta at conversion (sigmoid of the bias), in (0, 1)", true, true},
              {"decay_init", 0.001, "1 - a at conversion: the per-token forgetting, in (0, 1)", true, true}};
  r.new_tensors = [](const LayerContext& ctx) {
    const std::int64_t heads = ctx.config.num_key_value_heads, hidden = ctx.config.hidden_size;
    const double beta = ctx.params.at("beta_init").get<double>(), decay = ctx.params.at("decay_init").get<double>();
    // softplus(dt_bias) = -log(1 - decay), so that a = exp(-softplus(dt_bias)) = 1 - decay (A_log = 0).
    const double dt = -std::log1p(-decay), dt_bias = dt + std::log(-std::expm1(-dt));
    const double beta_bias = std::log(beta / (1 - beta));
    return std::vector<NewTensor>{recipes::filled(kBetaWeight, {heads, hidden}, 0.0), recipes::filled(kBetaBias, {heads}, beta_bias),
                                  recipes::filled(kDecayWeight, {heads, hidden}, 0.0), recipes::filled(kDecayBias, {heads}, dt_bias),
                                  recipes::filled(kDecayLogScale, {heads}, 0.0)};
  };
  return recipes::program_recipe<GatedDeltaNetProgram>(std::move(r));
}

}  // namespace linearize
