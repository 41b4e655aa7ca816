// Mamba-2 from attention, Mamba-in-the-Llama's mapping (Wang et al. 2024, arXiv 2408.15237, section 3;
// Mamba-2 / SSD: Dao & Gu 2024, arXiv 2405.21060, eq. 1 with scalar A per head):
//   x <- W_V x_in, B <- W_K x_in (per kv head), C <- W_Q x_in (per query head), after the family's q/k norm;
//   a short causal depthwise conv (K taps, SiLU) over the channels [x, B, C]; then x and B repeated from the
//   kv heads to the query heads (the paper's GQA expansion);
//   dt_t = softplus(x_in . w_dt + dt_bias) per head,  log a_t = -exp(A_log) dt_t <= 0;
//   S_t = a_t S_{t-1} + B_t (dt_t x_t)^T,  y_t = C_t^T S_t + D x_t   (SSD: simple GLA, scale 1);
//   y = RMSNorm(y * silu(z)) w over all heads (Mamba-2's gated norm, one group), z = W_z x_in;  out = W_O y.
// Conversion starts the conv as the identity tap (the last tap 1), dt = dt_init, A spread over [1, 16] across
// heads (Mamba's range), D = 1, the norm 1, W_dt = 0 and W_z ~ N(0, 0.02^2) seeded by the layer (Mamba's
// in_proj init: the gate must start nonzero for gradients to reach the rest). Stage 1 trains all of them.
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/short_conv.h"

namespace linearize {
namespace {

using names::kConvBias, names::kConvWeight, names::kDecayLogScale, names::kDtBias, names::kDtWeight, names::kGateNormWeight,
    names::kGateWeight, names::kSkip;

class Mamba2Mixer final : public TokenMixer {
 public:
  Mamba2Mixer(const SoftmaxAttentionMixer& source, double norm_eps, const LayerTensors& t)
      : source_(source), eps_(norm_eps), z_(t.at(kGateWeight)), dt_w_(t.at(kDtWeight)), dt_b_(t.at(kDtBias)),
        a_log_(t.at(kDecayLogScale)), d_(t.at(kSkip)), conv_w_(t.at(kConvWeight)), conv_b_(t.at(kConvBias)),
        norm_(t.at(kGateNormWeight)) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t /*start*/, MixerState* state, const MixerCall& call) const override {
    auto* st = static_cast<recipes::ConvLinearMixerState*>(state);
    const std::int64_t B = x.size(0), T = x.size(1), H = source_.shape().heads, d = source_.shape().head_dim;
    const auto h = source_.project_heads(x);
    const auto kv = h.v.size(2) * d;
    const auto xf = recipes::at_least_fp32(x);
    const auto channels = recipes::at_least_fp32(at::cat({h.v.reshape({B, T, -1}), h.k.reshape({B, T, -1}), h.q.reshape({B, T, -1})}, -1));
    auto conv = kernels::short_conv(channels, conv_w_, conv_b_, st ? st->conv : at::Tensor());
    const auto xs = recipes::repeat_heads(conv.y.narrow(-1, 0, kv).view({B, T, -1, d}), H);
    const auto bs = recipes::repeat_heads(conv.y.narrow(-1, kv, kv).view({B, T, -1, d}), H);
    const auto cs = conv.y.narrow(-1, 2 * kv, H * d).view({B, T, H, d});
    const auto dt = at::softplus(at::linear(xf, dt_w_.to(xf.scalar_type()), dt_b_.to(xf.scalar_type())));  // [B,T,H]
    kernels::LinearAttentionInputs in;
    in.q = cs;
    in.k = bs;
    in.v = xs * dt.unsqueeze(-1);
    in.log_decay = -at::exp(a_log_.to(xf.scalar_type())) * dt;
    kernels::LinearAttentionOptions options;
    options.form = recipes::form_for(call, T, state);
    options.scale = 1.0;
    auto ssd = kernels::linear_attention(in, st ? std::move(st->linear) : kernels::LinearState{}, options);
    if (call.capture) call.capture(names::capture(call.scope, names::MixerCapture::o_lin), ssd.o);
    if (st) {
      st->linear = std::move(ssd.state);
      st->conv = std::move(conv.state);
    }
    const auto y = (recipes::at_least_fp32(ssd.o) + d_.to(xf.scalar_type()).view({1, 1, H, 1}) * xs).reshape({B, T, H * d}) *
                   at::silu(at::linear(xf, z_.to(xf.scalar_type())));
    const auto normed = y * at::rsqrt(y.pow(2).mean(-1, /*keepdim=*/true) + eps_) * norm_.to(xf.scalar_type());
    return source_.project_output(normed.view({B, T, H, d}).to(x.scalar_type()));
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::ConvLinearMixerState>(); }
  std::string kind() const override { return "mamba2"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override {
    return {{kGateWeight, z_}, {kDtWeight, dt_w_}, {kDtBias, dt_b_}, {kDecayLogScale, a_log_}, {kSkip, d_},
            {kConvWeight, conv_w_}, {kConvBias, conv_b_}, {kGateNormWeight, norm_}};
  }

 private:
  SoftmaxAttentionMixer source_;
  double eps_;
  at::Tensor z_, dt_w_, dt_b_, a_log_, d_, conv_w_, conv_b_, norm_;
};

}  // namespace

Recipe mamba2_recipe() {
  Recipe r;
  r.name = "mamba2";
  r.summary = "Mamba-2 (SSD) from attention as Mamba-in-the-Llama: C, B, x from W_Q, W_K, W_V, short conv, dt, A, D, gated norm";
  r.params = {{"conv_kernel", 4, "taps of the short causal convolution over [x, B, C]", true},
              {"dt_init", 0.01, "dt = softplus(dt_bias) at conversion (Mamba samples it in [0.001, 0.1])", true},
              {"norm_eps", 1e-5, "epsilon of the gated RMSNorm", true}};
  r.new_tensors = [](const LayerContext& ctx) {
    const auto& c = ctx.config;
    const std::int64_t H = c.num_attention_heads, d = c.head_dim, hidden = c.hidden_size;
    const std::int64_t channels = 2 * c.num_key_value_heads * d + H * d, K = ctx.params.at("conv_kernel").get<std::int64_t>();
    const double dt = ctx.params.at("dt_init").get<double>(), dt_bias = dt + std::log(-std::expm1(-dt));  // softplus^-1
    const auto seed = static_cast<std::uint64_t>(ctx.layer) + 0x6d616d6261ULL;
    return std::vector<NewTensor>{
        {kGateWeight, {H * d, hidden}, [H, d, hidden, seed] {
           auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
           return at::normal(0.0, 0.02, {H * d, hidden}, gen, at::TensorOptions().dtype(at::kFloat));
         }},
        recipes::filled(kDtWeight, {H, hidden}, 0.0),
        recipes::filled(kDtBias, {H}, dt_bias),
        {kDecayLogScale, {H}, [H] { return at::log(H > 1 ? at::linspace(1.0, 16.0, H, at::kFloat) : at::ones({1}, at::kFloat)); }},
        recipes::filled(kSkip, {H}, 1.0),
        {kConvWeight, {channels, K}, [channels, K] {
           auto w = at::zeros({channels, K}, at::kFloat);
           w.select(1, K - 1).fill_(1.0);
           return w;
         }},
        recipes::filled(kConvBias, {channels}, 0.0),
        recipes::filled(kGateNormWeight, {H * d}, 1.0)};
  };
  r.make_mixer = [](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    return std::make_unique<Mamba2Mixer>(source, ctx.params.at("norm_eps").get<double>(), t);
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const std::int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, d = c.head_dim;
    const std::int64_t K = layer.params().at("conv_kernel").get<std::int64_t>(), kv = Hkv * d;
    const std::int64_t channels = 2 * kv + H * d;
    const auto h = layer.project_heads(x);
    const auto mask = layer.token_mask();  // [B, 1, S, 1]
    // The short conv over [x, B, C]: the last K-1 inputs carried, a depthwise Conv over them and the call's (a
    // padded token's inputs zeroed, as the zeros before a first token).
    const auto conv_state = layer.state("conv", {"batch", K - 1, channels});
    const auto channels_of_call = o.mul(o.concat({o.tokens_first(h.v), o.tokens_first(h.k), o.tokens_first(h.q)}, -1), o.squeeze(mask, {1}));
    const auto inputs = o.concat({conv_state, channels_of_call}, 1);
    const auto conv = o.op("Conv", {o.transpose(inputs, {0, 2, 1}), o.reshape(layer.recipe_tensor(kConvWeight), {channels, 1, K}),
                                    layer.recipe_tensor(kConvBias)},
                           {{"group", channels}});
    const auto pre = o.transpose(conv, {0, 2, 1});  // [B, S, channels]
    const auto y = o.mul(pre, o.sigmoid(pre));
    layer.set_state("conv", o.slice(inputs, 1, o.sub(o.dim(inputs, 1), o.i64({K - 1})), o.i64({std::numeric_limits<std::int64_t>::max()})),
                    {"batch", K - 1, channels});
    const auto heads_of = [&](std::int64_t from, std::int64_t width, std::int64_t count) {
      return o.transpose(o.reshape(o.slice(y, -1, from, from + width), {0, 0, count, d}), {0, 2, 1, 3});
    };
    const auto xs = layer.repeat_kv(heads_of(0, kv, Hkv)), bs = layer.repeat_kv(heads_of(kv, kv, Hkv));
    const auto cs = heads_of(2 * kv, H * d, H);
    const auto dt = o.op("Softplus", {layer.per_head(x, layer.recipe_tensor(kDtWeight), layer.recipe_tensor(kDtBias))});  // [B, H, S, 1]
    const auto log_decay = o.mul(o.neg(o.mul(o.exp(o.reshape(layer.recipe_tensor(kDecayLogScale), {1, H, 1, 1})), dt)), mask);
    auto options = layer.linear_attention_options();
    options.kv_heads = H;
    options.key_dim = d;
    options.value_dim = d;
    const auto state = layer.state("recurrent", {"batch", H, d, d});
    const auto ssd = onnx_linear_attention(o, cs, o.mul(bs, mask), o.mul(xs, dt), log_decay, state, std::nullopt, options);
    layer.set_state("recurrent", ssd.state, {"batch", H, d, d});
    // y = (SSD + D x) * silu(z), gated RMSNorm over all heads, then W_O.
    const auto skip = o.mul(o.reshape(layer.recipe_tensor(kSkip), {1, H, 1, 1}), xs);
    const auto z = o.linear(x, layer.recipe_tensor(kGateWeight));
    const auto gated = o.mul(o.tokens_first(o.add(ssd.o, skip)), o.mul(z, o.sigmoid(z)));
    const auto eps = layer.params().at("norm_eps").get<double>();
    const auto normed = o.mul(o.rms_normalize(gated, eps), layer.recipe_tensor(kGateNormWeight));
    return layer.project_output(o.transpose(o.reshape(normed, {0, 0, H, d}), {0, 2, 1, 3}));
  };
  return r;
}

}  // namespace linearize
