// SUPRA (research/linearization.md 5; Mercat et al. 2024, TRI-ML/linear_open_lm): phi(x) = RoPE(ReLU(xW + b))
// with one dense map over all heads for queries and one for keys, a fixed decay per head
// gamma_h = exp(-slope_h) from the ALiBi slopes, no denominator, k scaled by 1/sqrt(d), and a GroupNorm
// per head (no affine) before W_O:  S_t = gamma S_{t-1} + phi(k_t) v_t^T,  o_t = GroupNorm(phi(q_t) S_t).
// W starts as the identity and b at zero (the reference starts from a random Linear and uptrains 20-100B
// tokens; the identity keeps a training-free conversion closest to the source).
#include <cmath>

#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"

namespace linearize {
namespace {

// ALiBi slopes (Press et al. 2022): 2^(-8i/n) for i = 1..n when n is a power of two, else the slopes of
// the nearest power of two below, completed with every other slope of the next power of two.
std::vector<double> alibi_slopes(std::int64_t n) {
  auto power_of_two = [](std::int64_t m) {
    std::vector<double> s;
    const double start = std::pow(2.0, -8.0 / static_cast<double>(m));
    for (std::int64_t i = 0; i < m; ++i) s.push_back(std::pow(start, static_cast<double>(i + 1)));
    return s;
  };
  const auto closest = static_cast<std::int64_t>(std::pow(2.0, std::floor(std::log2(static_cast<double>(n)))));
  auto slopes = power_of_two(closest);
  if (closest != n) {
    const auto extra = power_of_two(2 * closest);
    for (std::int64_t i = 0; i < n - closest; ++i) slopes.push_back(extra[static_cast<std::size_t>(2 * i)]);
  }
  return slopes;
}

class SupraMixer final : public TokenMixer {
 public:
  SupraMixer(const SoftmaxAttentionMixer& source, double groupnorm_eps, const LayerTensors& t)
      : source_(source), eps_(groupnorm_eps), wq_(t.at(names::kFeatureMapQWeight)), bq_(t.at(names::kFeatureMapQBias)),
        wk_(t.at(names::kFeatureMapKWeight)), bk_(t.at(names::kFeatureMapKBias)) {
    std::vector<double> log_gamma;
    for (const double slope : alibi_slopes(source_.shape().heads)) log_gamma.push_back(-slope);
    log_gamma_ = at::tensor(log_gamma, at::kFloat).to(wq_.device());
  }

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    auto* st = static_cast<recipes::LinearMixerState*>(state);
    const std::int64_t B = x.size(0), T = x.size(1), H = source_.shape().heads, d = source_.shape().head_dim;
    const auto h = source_.project_heads(x);
    const auto cs = source_.cos_sin(start, T, x);
    const auto phi = [&](const at::Tensor& heads, const at::Tensor& w, const at::Tensor& b) {
      const auto in = recipes::at_least_fp32(heads.reshape({B, T, -1}));  // maps in fp32 at least, weights cast
      const auto mapped = at::relu(at::linear(in, w.to(in.scalar_type()), b.to(in.scalar_type())));
      return recipes::rope_bthd(mapped.view({B, T, -1, d}), cs);
    };
    kernels::LinearAttentionInputs in;
    in.q = phi(h.q, wq_, bq_);
    in.k = recipes::repeat_heads(phi(h.k, wk_, bk_), H);
    in.v = recipes::repeat_heads(h.v, H);
    in.log_gamma = log_gamma_;
    kernels::LinearAttentionOptions options;
    options.form = recipes::form_for(call, T, state);
    options.scale = 1.0 / std::sqrt(static_cast<double>(d));
    auto lin = kernels::linear_attention(in, st ? std::move(st->linear) : kernels::LinearState{}, options);
    // GroupNorm(num_groups = H, affine = False) over the concatenated heads: each head normalised alone.
    const auto o = recipes::at_least_fp32(lin.o);
    const auto mean = o.mean(-1, true), var = (o - mean).pow(2).mean(-1, true);
    const auto normed = (o - mean) * at::rsqrt(var + eps_);
    if (call.capture) call.capture(names::capture(call.scope, names::MixerCapture::o_lin), lin.o);
    if (st) st->linear = std::move(lin.state);
    return source_.project_output(normed.to(x.scalar_type()));
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::LinearMixerState>(); }
  std::string kind() const override { return "supra"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override {
    return {{names::kFeatureMapQWeight, wq_}, {names::kFeatureMapQBias, bq_}, {names::kFeatureMapKWeight, wk_}, {names::kFeatureMapKBias, bk_}};
  }

 private:
  SoftmaxAttentionMixer source_;
  double eps_;
  at::Tensor wq_, bq_, wk_, bk_, log_gamma_;
};

}  // namespace

Recipe supra_recipe() {
  Recipe r;
  r.name = "supra";
  r.summary = "RoPE(ReLU(xW+b)) maps, fixed ALiBi-slope decay per head, GroupNorm per head, no denominator";
  r.params = {{"groupnorm_eps", 1e-5, "epsilon of the per-head GroupNorm"}};
  r.new_tensors = [](const LayerContext& ctx) {
    const std::int64_t q = ctx.config.num_attention_heads * ctx.config.head_dim;
    const std::int64_t k = ctx.config.num_key_value_heads * ctx.config.head_dim;
    auto eye = [](std::int64_t n) { return [n] { return at::eye(n, at::kFloat); }; };
    return std::vector<NewTensor>{{names::kFeatureMapQWeight, {q, q}, eye(q)}, recipes::filled(names::kFeatureMapQBias, {q}, 0.0),
                                  {names::kFeatureMapKWeight, {k, k}, eye(k)}, recipes::filled(names::kFeatureMapKBias, {k}, 0.0)};
  };
  r.make_mixer = [](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    return std::make_unique<SupraMixer>(source, ctx.params.at("groupnorm_eps").get<double>(), t);
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const std::int64_t H = c.num_attention_heads, d = c.head_dim;
    const auto h = layer.project_heads(x);
    // phi over the concatenated heads of a token: [B, h, S, d] -> [B, S, h d] -> ReLU(. W^T + b) -> heads, RoPE.
    const auto phi = [&](const std::string& heads, const char* weight, const char* bias) {
      const auto mapped = o.op("Relu", {o.linear(o.tokens_first(heads), layer.recipe_tensor(weight), layer.recipe_tensor(bias))});
      return layer.rope(o.transpose(o.reshape(mapped, {0, 0, -1, d}), {0, 2, 1, 3}));
    };
    const auto mask = layer.token_mask();
    const auto phi_k = o.mul(layer.repeat_kv(phi(h.k, names::kFeatureMapKWeight, names::kFeatureMapKBias)), mask);
    std::vector<float> log_gamma;
    for (const double slope : alibi_slopes(H)) log_gamma.push_back(static_cast<float>(-slope));
    const auto log_gamma_heads = o.model().constant(o.graph().fresh_name("supra_log_gamma"), log_gamma, {1, H, 1, 1});
    auto options = layer.linear_attention_options();
    options.kv_heads = H;  // per query head, as SupraMixer's state
    options.key_dim = d;
    options.value_dim = d;
    options.scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto state = layer.state("recurrent", {"batch", H, d, d});
    // A padded token keeps the state: no write (k = 0) and no decay (log gamma x 0).
    const auto lin = onnx_linear_attention(o, phi(h.q, names::kFeatureMapQWeight, names::kFeatureMapQBias), phi_k,
                                           layer.repeat_kv(h.v), o.mul(mask, log_gamma_heads), state, std::nullopt, options);
    layer.set_state("recurrent", lin.state, {"batch", H, d, d});
    // GroupNorm per head, no affine.
    const auto centred = o.sub(lin.o, o.reduce_mean(lin.o, -1));
    const auto eps = o.f32(static_cast<float>(layer.params().at("groupnorm_eps").get<double>()));
    const auto normed = o.div(centred, o.op("Sqrt", {o.add(o.reduce_mean(o.mul(centred, centred), -1), eps)}));
    return layer.project_output(normed);
  };
  return r;
}

}  // namespace linearize
