// Mamba-2 from attention, Mamba-in-the-Llama's mapping (Wang et al. 2024, arXiv 2408.15237, section 3;
// Mamba-2 / SSD: Dao & Gu 2024, arXiv 2405.21060, eq. 1 with scalar A per head), as the Granite / Bamba mixer
// (transformers' GraniteMoeHybridMambaLayer with n_groups = heads, vLLM's and llama.cpp's grouping), exactly:
//   x <- W_V x_in, B <- W_K x_in (per kv head), C <- W_Q x_in (per query head), the weights alone (the mixer's
//   in_proj has no bias and no q/k norm: the source's q/k/v biases start as the conv bias instead, which is
//   exact through the identity tap);
//   a short causal depthwise conv (K taps, bias, SiLU) over the channels [x, B, C]; then x and B repeated from
//   the kv heads to the query heads (the paper's GQA expansion; each head its own group of B and C);
//   dt_t = softplus(x_in . w_dt + dt_bias) per head,  log a_t = -exp(A_log) dt_t <= 0;
//   S_t = a_t S_{t-1} + B_t (dt_t x_t)^T,  y_t = C_t^T S_t + D x_t   (SSD: simple GLA, scale 1);
//   y = RMSNorm(y * silu(z)) w, the norm per head (the gate before it), z = W_z x_in;  out = W_O y.
// Conversion starts the conv as the identity tap (the last tap 1), dt = dt_init, A spread over [1, 16] across
// heads (Mamba's range), D = 1, the norm 1, W_dt = 0 and W_z ~ N(0, 0.02^2) seeded by the layer (Mamba's
// in_proj init: the gate must start nonzero for gradients to reach the rest). Stage 1 trains all of them.
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

using names::kConvBias, names::kConvWeight, names::kDecayLogScale, names::kDtBias, names::kDtWeight, names::kOutputNormWeight,
    names::kGateWeight, names::kSkip;

struct Mamba2Program {
  static constexpr const char* kind = "mamba2";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const std::int64_t H = o.heads(), Hkv = o.kv_heads(), d = o.head_dim();
    const auto h = o.project_weights(x);
    const auto xf = o.fp32(x);
    const auto conv = o.short_conv({{h.v, Hkv}, {h.k, Hkv}, {h.q, H}}, kConvWeight, kConvBias);  // [x, B, C]
    const auto xs = o.repeat_kv(conv[0]), bs = o.repeat_kv(conv[1]), cs = conv[2];
    const auto dt = o.softplus(o.per_head(xf, kDtWeight, kDtBias));
    recipes::Recurrence ssd_shape{H, d, d};
    ssd_shape.decay = recipes::Decay::per_head;
    const auto log_decay = o.mul(o.neg(o.exp(o.head_param(kDecayLogScale))), dt);
    const auto ssd = o.linear_attention(cs, bs, o.mul(xs, dt), log_decay, ssd_shape);
    o.capture(names::MixerCapture::o_lin, ssd);
    // (SSD + D x) * silu(z), then the RMSNorm of each head, its weight and W_O.
    const auto gated = o.mul(o.add(o.fp32(ssd), o.mul(o.head_param(kSkip), xs)), o.silu(o.split_heads(o.linear(xf, kGateWeight), d)));
    const auto normed = o.mul(o.merge_heads(o.rms_normalize(gated, o.number("norm_eps"))), o.param(kOutputNormWeight));
    return o.project_output(o.split_heads(normed, d));
  }
};

}  // namespace

Recipe mamba2_recipe() {
  Recipe r;
  r.name = "mamba2";
  r.summary = "Mamba-2 (SSD) from attention as Mamba-in-the-Llama, the Granite mixer: C, B, x from W_Q, W_K, W_V, conv, dt, A, D, gated norm";
  r.params = {{"conv_kernel", 4, "taps of the short causal convolution over [x, B, C]", true},
              {"dt_init", 0.01, "dt = softplus(dt_bias) at conversion (Mamba samples it in [0.001, 0.1])", true},
              {"norm_eps", nullptr, "epsilon of the gated RMSNorm (null: the source's rms_norm_eps, as Granite)", true, false,
               RecipeParamRole::none, [](const ModelConfig& c) { return nlohmann::json(c.rms_norm_eps); }}};
  r.new_tensors = [](const LayerContext& ctx) {
    const auto& c = ctx.config;
    const std::int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, d = c.head_dim, hidden = c.hidden_size;
    const std::int64_t channels = 2 * Hkv * d + H * d, K = ctx.params.at("conv_kernel").get<std::int64_t>();
    const double dt_bias = recipes::softplus_inverse(ctx.params.at("dt_init").get<double>());
    // The source's v, k, q biases ([x, B, C]) as the conv bias: through the identity tap, conv(W x) + b = W x + b.
    auto conv_bias = [source = ctx.source_tensor, layer = ctx.layer, H, Hkv, d] {
      const auto bias = [&](names::LayerModule m, std::int64_t rows) {
        const auto b = source ? source(names::bias(layer, m)) : at::Tensor();
        return b.defined() ? b.to(at::kFloat) : at::zeros({rows}, at::kFloat);
      };
      return at::cat({bias(names::LayerModule::v_proj, Hkv * d), bias(names::LayerModule::k_proj, Hkv * d),
                      bias(names::LayerModule::q_proj, H * d)});
    };
    return std::vector<NewTensor>{
        recipes::gate_projection(ctx, H * d, 0x6d616d6261ULL),
        recipes::filled(kDtWeight, {H, hidden}, 0.0),
        recipes::filled(kDtBias, {H}, dt_bias),
        {kDecayLogScale, {H}, [H] { return at::log(H > 1 ? at::linspace(1.0, 16.0, H, at::kFloat) : at::ones({1}, at::kFloat)); }},
        recipes::filled(kSkip, {H}, 1.0),
        recipes::identity_conv(kConvWeight, channels, K),
        {kConvBias, {channels}, conv_bias},
        recipes::filled(kOutputNormWeight, {H * d}, 1.0)};
  };
  return recipes::program_recipe<Mamba2Program>(std::move(r));
}

}  // namespace linearize
