// Liger-GLA (research/linearization.md 1; OpenSparseLLMs/Linearization): no new parameters. Per layer,
//   gate   log a_t = logsigmoid(pool(W_K x_t)) / 16, per key channel (the pool is an identity when its
//          output size equals the key width, as in every shipped config);
//   linear o_lin = GLA(softmax_d(q), softmax_d(k), v), scale 1, no denominator, no RoPE;
//   window o_swa = softmax attention over RoPE'd q, k in a window of 64 (its own normaliser);
//   o = 0.5 o_swa + 0.5 o_lin, then W_O.
// Unlike the reference code, decode keeps the window's KV cache, so decode equals prefill.
#include <cmath>

#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/feature_maps.h"
#include "kernels/window_attention.h"

namespace linearize {
namespace {

class LigerGlaMixer final : public TokenMixer {
 public:
  LigerGlaMixer(const SoftmaxAttentionMixer& source, std::int64_t window, double gate_normalizer)
      : source_(source), window_(window), gate_normalizer_(gate_normalizer) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    auto* st = static_cast<recipes::LinearMixerState*>(state);
    const auto h = source_.project_heads(x);
    kernels::LinearAttentionInputs in;
    in.q = kernels::softmax_d(h.q.to(at::kFloat));
    in.k = kernels::softmax_d(h.k.to(at::kFloat));
    in.v = h.v;
    in.log_decay = at::log_sigmoid(h.k.to(at::kFloat)) / gate_normalizer_;
    kernels::LinearAttentionOptions options;
    options.form = recipes::form_for(call, x.size(1), state);
    options.scale = 1.0;
    auto lin = kernels::linear_attention(in, st ? st->linear : kernels::LinearState{}, options);

    const auto cs = source_.cos_sin(start, x.size(1), x);
    const auto q = recipes::rope_bthd(h.q, cs);
    const auto keys = recipes::window_keys(st ? &st->window : nullptr, recipes::rope_bthd(h.k, cs), h.v, start);
    const auto swa = kernels::window_softmax_parts(q, keys.k, keys.v, start, keys.start, window_,
                                                   1.0 / std::sqrt(static_cast<double>(source_.shape().head_dim)));
    const auto o_swa = swa.numerator / swa.denominator.unsqueeze(-1);
    if (call.capture) {
      call.capture(call.scope + ".o_lin", lin.o);
      call.capture(call.scope + ".o_swa", o_swa);
    }
    if (st) {
      st->linear = std::move(lin.state);
      st->window = recipes::last_keys(keys, window_);
    }
    return source_.project_output((0.5 * o_swa + 0.5 * lin.o.to(at::kFloat)).to(x.scalar_type()));
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::LinearMixerState>(); }
  std::string kind() const override { return "liger-gla"; }

 private:
  SoftmaxAttentionMixer source_;
  std::int64_t window_;
  double gate_normalizer_;
};

}  // namespace

Recipe liger_gla_recipe() {
  Recipe r;
  r.name = "liger-gla";
  r.summary = "GLA with gates pooled from W_K x (logsigmoid/16) and softmax_d maps, mixed 0.5/0.5 with SWA-64";
  r.params = {{"window", 64, "sliding-window size of the softmax branch (keys n-window < j <= n)"},
              {"gate_normalizer", 16.0, "log a_t = logsigmoid(W_K x_t) / gate_normalizer"}};
  r.new_tensors = [](const LayerContext&) { return std::vector<NewTensor>{}; };
  r.make_mixer = [](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors&) {
    return std::make_unique<LigerGlaMixer>(source, ctx.params.at("window").get<std::int64_t>(),
                                           ctx.params.at("gate_normalizer").get<double>());
  };
  return r;
}

}  // namespace linearize
