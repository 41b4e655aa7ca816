// Liger-GLA (research/linearization.md 1; OpenSparseLLMs/Linearization): no new parameters. Per layer,
//   gate   log a_t = logsigmoid(pool(W_K x_t)) / 16, per key channel (the pool is an identity when its
//          output size equals the key width, as in every shipped config);
//   linear o_lin = GLA(softmax_d(q), softmax_d(k), v), scale 1, no denominator, no RoPE;
//   window o_swa = softmax attention over RoPE'd q, k in a window of 64 (its own normaliser);
//   o = 0.5 o_swa + 0.5 o_lin, then W_O.
// kernels/hybrid_attention.h computes it. Unlike the reference code, decode keeps the window's KV cache,
// so decode equals prefill.
#include <cmath>

#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/feature_maps.h"

namespace linearize {
namespace {

class LigerGlaMixer final : public TokenMixer {
 public:
  LigerGlaMixer(const SoftmaxAttentionMixer& source, std::int64_t window, double gate_normalizer)
      : source_(source), window_(window), gate_normalizer_(gate_normalizer) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    const auto h = source_.project_heads(x);
    const auto cs = source_.cos_sin(start, x.size(1), x);
    const auto k = recipes::at_least_fp32(h.k);
    const kernels::LigerAttentionInputs in{recipes::rope_bthd(h.q, cs), recipes::rope_bthd(h.k, cs), h.v,
                                           kernels::softmax_d(recipes::at_least_fp32(h.q)), kernels::softmax_d(k),
                                           at::log_sigmoid(k) / gate_normalizer_};
    return recipes::run_hybrid(kernels::liger_attention, kernels::liger_decode_step, in, window_, source_, x, state, call);
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::HybridMixerState>(); }
  std::string kind() const override { return "liger-gla"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }

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
  r.params = {{"window", 64, "sliding-window size of the softmax branch (keys n-window < j <= n)", true, false, RecipeParamRole::window},
              {"gate_normalizer", 16.0, "log a_t = logsigmoid(W_K x_t) / gate_normalizer", true}};
  r.new_tensors = [](const LayerContext&) { return std::vector<NewTensor>{}; };
  r.check_source = recipes::require_default_attention_scale;
  r.make_mixer = [](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors&) {
    return std::make_unique<LigerGlaMixer>(source, ctx.params.at("window").get<std::int64_t>(),
                                           ctx.params.at("gate_normalizer").get<double>());
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const std::int64_t Hkv = c.num_key_value_heads, D = c.head_dim;
    const std::int64_t window = layer.params().at("window").get<std::int64_t>();
    const auto h = layer.project_heads(x);
    const auto mask = layer.token_mask();
    // Linear branch: GLA on softmax_d(q), softmax_d(k), per-channel log gate logsigmoid(k) / normaliser.
    const auto log_sigmoid_k = o.neg(o.op("Softplus", {o.neg(h.k)}));
    const auto normalizer = o.f32(static_cast<float>(layer.params().at("gate_normalizer").get<double>()));
    auto options = layer.linear_attention_options();
    options.kv_heads = Hkv;
    options.groups = c.kv_groups();
    options.key_dim = D;
    options.value_dim = D;
    options.decay_per_channel = true;
    const auto state = layer.state("recurrent", {"batch", Hkv, D, D});
    const auto lin = onnx_linear_attention(o, o.softmax(h.q), o.mul(o.softmax(h.k), mask), h.v,
                                           o.mul(o.div(log_sigmoid_k, normalizer), mask), state, std::nullopt, options);
    layer.set_state("recurrent", lin.state, {"batch", Hkv, D, D});
    // Window branch over RoPE'd q, k: the cached keys and the call's.
    const auto w = layer.window_branch(layer.rope(h.q), layer.rope(h.k), h.v, window);
    const auto half = o.f32(0.5f);
    const auto mixed = o.add(o.mul(o.div(w.numerator, w.denominator), half), o.mul(lin.o, half));
    return layer.project_output(mixed);
  };
  return r;
}

}  // namespace linearize
