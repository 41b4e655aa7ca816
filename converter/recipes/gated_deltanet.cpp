// Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv 2412.06464, eq. 10) as Qwen3.5's linear-attention layer
// (transformers' Qwen3_5GatedDeltaNet), exactly, on the source attention's projections:
//   [q, k, v] = silu(conv1d([W_Q x, W_K x, W_V x]))   depthwise causal, K taps, no bias; no RoPE, no q/k norm,
//                                                      no projection bias (Qwen3.5's in_proj_qkv has none)
//   q_t, k_t <- L2norm(q_t), L2norm(k_t) per head,  q scaled by d^-1/2
//   beta_t = sigmoid(x_t . w_beta)                                        the write strength (no bias)
//   log a_t = -exp(A_log) softplus(x_t . w_decay + dt_bias) <= 0          Mamba-2's decay
//   S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t
//   out = W_O [RMSNorm(o_t) w * silu(W_z x_t)]    per head, norm before the gate, one w [d] for all heads
// k, v, beta and the decay are per kv head, q and z per query head: query head h reads state h / (H / Hkv), so
// the state stays grouped here; export-native repeats the kv rows to the query heads (Qwen3.5 has one head
// count for q and k), which is exact and grows its state by H / Hkv (docs/recipes.md#gated-deltanet).
// At conversion the conv is the identity tap, beta = 1/2, a = 1 - decay_init, the norm 1 and W_z ~ N(0, 0.02^2):
// the output starts small (silu(z) ~ z / 2), and stage 1 fits the layer to the softmax attention's outputs.
#include <cmath>

#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

using names::kBetaWeight, names::kConvWeight, names::kDecayBias, names::kDecayLogScale, names::kDecayWeight,
    names::kGateWeight, names::kOutputNormWeight;

constexpr double kL2Eps = 1e-6;  // Qwen3.5's l2norm (fla's) epsilon

struct GatedDeltaNetProgram {
  static constexpr const char* kind = "gated-deltanet";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const std::int64_t H = o.heads(), Hkv = o.kv_heads(), d = o.head_dim();
    const auto h = o.project_weights(x);
    const auto qkv = o.short_conv({{h.q, H}, {h.k, Hkv}, {h.v, Hkv}}, kConvWeight, "");
    const auto xf = o.fp32(x);
    const auto beta = o.sigmoid(o.per_head(xf, kBetaWeight, ""));
    const auto log_decay = o.mul(o.neg(o.exp(o.head_param(kDecayLogScale))), o.softplus(o.per_head(xf, kDecayWeight, kDecayBias)));
    recipes::Recurrence state{Hkv, d, d, H / Hkv};
    state.scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto out = o.delta_rule(o.l2_normalize(qkv[0], kL2Eps), o.l2_normalize(qkv[1], kL2Eps), qkv[2], beta, log_decay, state);
    o.capture(names::MixerCapture::o_lin, out);
    const auto normed = o.mul(o.rms_normalize(out, o.number("norm_eps")), o.param(kOutputNormWeight));
    return o.project_output(o.mul(normed, o.silu(o.split_heads(o.linear(xf, kGateWeight), d))));
  }
};

}  // namespace

Recipe gated_deltanet_recipe() {
  Recipe r;
  r.name = "gated-deltanet";
  r.summary = "Qwen3.5's Gated DeltaNet on the source q,k,v: short conv, L2-normed q,k, beta, Mamba-2 decay, gated output norm";
  r.params = {{"conv_kernel", 4, "taps of the short causal convolution over [q, k, v] (Qwen3.5: 4)", true},
              {"decay_init", 0.001, "1 - a at conversion: the per-token forgetting, in (0, 1)", true, true},
              {"norm_eps", nullptr, "epsilon of the gated output RMSNorm (null: the source's rms_norm_eps, as Qwen3.5)", true,
               false, RecipeParamRole::none, [](const ModelConfig& c) { return nlohmann::json(c.rms_norm_eps); }}};
  r.new_tensors = [](const LayerContext& ctx) {
    const auto& c = ctx.config;
    const std::int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, d = c.head_dim, hidden = c.hidden_size;
    const std::int64_t K = ctx.params.at("conv_kernel").get<std::int64_t>();
    // softplus(dt_bias) = -log(1 - decay_init), so that a = exp(-softplus(dt_bias)) = 1 - decay_init (A_log = 0).
    const double dt_bias = recipes::softplus_inverse(-std::log1p(-ctx.params.at("decay_init").get<double>()));
    return std::vector<NewTensor>{recipes::identity_conv(kConvWeight, (H + 2 * Hkv) * d, K),
                                  recipes::filled(kBetaWeight, {Hkv, hidden}, 0.0),
                                  recipes::filled(kDecayWeight, {Hkv, hidden}, 0.0),
                                  recipes::filled(kDecayBias, {Hkv}, dt_bias),
                                  recipes::filled(kDecayLogScale, {Hkv}, 0.0),
                                  recipes::gate_projection(ctx, H * d, 0x67646e6574ULL),
                                  recipes::filled(kOutputNormWeight, {d}, 1.0)};
  };
  return recipes::program_recipe<GatedDeltaNetProgram>(std::move(r));
}

}  // namespace linearize
