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

#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/delta_rule.h"

namespace linearize {
namespace {

using names::kBetaBias, names::kBetaWeight, names::kDecayBias, names::kDecayLogScale, names::kDecayWeight;

class GatedDeltaNetMixer final : public TokenMixer {
 public:
  GatedDeltaNetMixer(const SoftmaxAttentionMixer& source, const LayerTensors& t)
      : source_(source),
        beta_w_(t.at(kBetaWeight)),
        beta_b_(t.at(kBetaBias)),
        decay_w_(t.at(kDecayWeight)),
        decay_b_(t.at(kDecayBias)),
        a_log_(t.at(kDecayLogScale)) {}

  // Position-free: the state carries the order, so the start position is not needed.
  at::Tensor forward(const at::Tensor& x, std::int64_t /*start*/, MixerState* state, const MixerCall& call) const override {
    auto* st = static_cast<recipes::LinearMixerState*>(state);
    const auto h = source_.project_heads(x);
    const auto unit = [](const at::Tensor& t) {  // L2 norm per head, as fla's l2norm (eps 1e-6 under the root)
      const auto s = at::silu(recipes::at_least_fp32(t));
      return s * at::rsqrt(s.pow(2).sum(-1, /*keepdim=*/true) + 1e-6);
    };
    const auto xf = recipes::at_least_fp32(x);
    kernels::DeltaRuleInputs in;
    in.q = unit(h.q);
    in.k = unit(h.k);
    in.v = h.v;
    const auto as_x = [&](const at::Tensor& t) { return t.to(xf.scalar_type()); };  // bf16 models' weights, cast
    in.beta = at::sigmoid(at::linear(xf, as_x(beta_w_), as_x(beta_b_)));                                 // [B,T,Hkv]
    in.log_decay = -at::exp(as_x(a_log_)) * at::softplus(at::linear(xf, as_x(decay_w_), as_x(decay_b_)));  // [B,T,Hkv]
    kernels::LinearAttentionOptions options;
    options.form = recipes::form_for(call, x.size(1), state);
    options.scale = 1.0;
    auto out = kernels::delta_rule(in, st ? st->linear : kernels::LinearState{}, options);
    if (call.capture) call.capture(names::capture(call.scope, names::MixerCapture::o_lin), out.o);
    if (st) st->linear = std::move(out.state);
    return source_.project_output(out.o.to(x.scalar_type()));
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::LinearMixerState>(); }
  std::string kind() const override { return "gated-deltanet"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override {
    return {{kBetaWeight, beta_w_}, {kBetaBias, beta_b_}, {kDecayWeight, decay_w_}, {kDecayBias, decay_b_}, {kDecayLogScale, a_log_}};
  }

 private:
  SoftmaxAttentionMixer source_;
  at::Tensor beta_w_, beta_b_, decay_w_, decay_b_, a_log_;
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
  r.make_mixer = [](const LayerContext&, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    return std::make_unique<GatedDeltaNetMixer>(source, t);
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const std::int64_t Hkv = c.num_key_value_heads, D = c.head_dim;
    const auto h = layer.project_heads(x);
    const auto unit = [&](const std::string& t) {  // SiLU, then L2 norm per head (eps 1e-6 under the root)
      const auto s = o.mul(t, o.sigmoid(t));
      return o.div(s, o.op("Sqrt", {o.add(o.reduce_sum(o.mul(s, s), -1), o.f32(1e-6f))}));
    };
    const auto mask = layer.token_mask();
    // A padded token changes nothing: beta = 0 writes nothing, log decay 0 keeps the state.
    const auto beta = o.mul(o.sigmoid(layer.per_head(x, layer.recipe_tensor(kBetaWeight), layer.recipe_tensor(kBetaBias))), mask);
    const auto dt = o.op("Softplus", {layer.per_head(x, layer.recipe_tensor(kDecayWeight), layer.recipe_tensor(kDecayBias))});
    const auto a = o.exp(o.reshape(layer.recipe_tensor(kDecayLogScale), {1, Hkv, 1, 1}));
    const auto log_decay = o.mul(o.neg(o.mul(a, dt)), mask);
    auto options = layer.linear_attention_options();
    options.kv_heads = Hkv;
    options.groups = c.kv_groups();
    options.key_dim = D;
    options.value_dim = D;
    const auto state = layer.state("recurrent", {"batch", Hkv, D, D});
    const auto out = onnx_delta_rule(o, unit(h.q), unit(h.k), h.v, beta, log_decay, state, options);
    layer.set_state("recurrent", out.state, {"batch", Hkv, D, D});
    return layer.project_output(out.o);
  };
  return r;
}

}  // namespace linearize
