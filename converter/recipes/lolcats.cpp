// LoLCATs (research/linearization.md 2; HazyResearch/lolcats, the `sw` window): per layer and query head,
// Hedgehog maps phi_q, phi_k ([softmax(xW), softmax(-xW)], W in R^{d x f}, truncated-identity init) on
// RoPE'd q, k, and a sliding window of 64 keys sharing one normaliser with the linear part:
//   y_n = (g_h sum_{W(n)} exp(s_nj - c_n) v_j + sum_{j <= n - 64} phi_q(q_n).phi_k(k_j) v_j)
//       / (g_h sum_{W(n)} exp(s_nj - c_n)     + sum_{j <= n - 64} phi_q(q_n).phi_k(k_j)),
// s_nj = q_n.k_j / sqrt(d), c_n the row max, g_h = sigmoid(w_h) learned per head (w0 = -2.1972, g = 0.1).
// The linear part covers exactly the keys that left the window: it runs on the key sequence shifted by
// the window (the keys entering the state), so prefill and decode agree; decode keeps `window` keys.
// kernels/hybrid_attention.h computes it.
#include <cmath>
#include <limits>

#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/feature_maps.h"

namespace linearize {
namespace {

class LolcatsMixer final : public TokenMixer {
 public:
  LolcatsMixer(const SoftmaxAttentionMixer& source, std::int64_t window, const LayerTensors& t)
      : source_(source), window_(window), map_q_(t.at(names::kFeatureMapQWeight)), map_k_(t.at(names::kFeatureMapKWeight)),
        window_factors_(t.at(names::kWindowFactors)) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    const std::int64_t H = source_.shape().heads;
    const auto h = source_.project_heads(x);
    const auto cs = source_.cos_sin(start, x.size(1), x);
    const auto q = recipes::at_least_fp32(recipes::rope_bthd(h.q, cs));
    // The maps compute in q's dtype (fp32, or fp64 in verify's rebuilt mixer), whatever the model's.
    const kernels::LolcatsAttentionInputs in{
        q, recipes::rope_bthd(h.k, cs), h.v, kernels::hedgehog(q, map_q_.to(q.scalar_type())),
        [this, H](const at::Tensor& k) { return kernels::hedgehog(recipes::repeat_heads(k, H), map_k_.to(k.scalar_type())); },
        window_factors_};
    return recipes::run_hybrid(kernels::lolcats_attention, kernels::lolcats_decode_step, in, window_, source_, x, state, call);
  }

  // The output's weights with the shared normaliser, as LoLCATs' hybrid_attention_quadratic returns them for
  // its xent (lolcats:src/model/linear_attention/linear_window_attention_sw.py): with w_ij = exp(s_ij - c_i)
  // for i - window < j <= i and l_ij = phi_q(q_i).phi_k(k_j) for j <= i - window,
  //   a_ij = (g_h w_ij + l_ij) / sum_j' (g_h w_ij' + l_ij').
  at::Tensor attention_weights(const at::Tensor& x) const override {
    const std::int64_t T = x.size(1), H = source_.shape().heads, d = source_.shape().head_dim;
    const auto h = source_.project_heads(x);
    const auto cs = source_.cos_sin(0, T, x);
    const auto q = recipes::at_least_fp32(recipes::rope_bthd(h.q, cs));
    const auto k = recipes::repeat_heads(recipes::at_least_fp32(recipes::rope_bthd(h.k, cs)), H);
    const auto positions = at::arange(T, x.options().dtype(at::kLong));
    const auto back = positions.unsqueeze(1) - positions.unsqueeze(0);  // i - j
    const auto outside_window = back.lt(0).logical_or(back.ge(window_));
    const auto scores = recipes::pairwise(q, k).mul(1.0 / std::sqrt(double(d)))
                            .masked_fill(outside_window, -std::numeric_limits<double>::infinity());
    const auto win = (scores - std::get<0>(scores.max(-1, /*keepdim=*/true))).exp();  // c_i: the window's row max
    const auto lin = recipes::pairwise(kernels::hedgehog(q, map_q_.to(q.scalar_type())), kernels::hedgehog(k, map_k_.to(q.scalar_type()))).masked_fill(back.lt(window_), 0);
    const auto mixed = at::sigmoid(window_factors_.to(q.scalar_type())).view({1, H, 1, 1}) * win + lin;
    return mixed / mixed.sum(-1, /*keepdim=*/true);
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::HybridMixerState>(); }
  std::string kind() const override { return "lolcats"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override {
    return {{names::kFeatureMapQWeight, map_q_}, {names::kFeatureMapKWeight, map_k_}, {names::kWindowFactors, window_factors_}};
  }

 private:
  SoftmaxAttentionMixer source_;
  std::int64_t window_;
  at::Tensor map_q_, map_k_, window_factors_;
};

}  // namespace

Recipe lolcats_recipe() {
  Recipe r;
  r.name = "lolcats";
  r.summary = "Hedgehog maps + sliding window 64 sharing one normaliser, learned per-head window factor";
  r.params = {{"window", 64, "keys n-window < j <= n take exact softmax; older keys the linear state", true, false, RecipeParamRole::window},
              {"feature_dim", nullptr, "Hedgehog map width f per half (null: head_dim / 2)", true},
              {"window_factor_init", -2.1972, "initial w_h, g_h = sigmoid(w_h) (-2.1972: g = 0.1)"}};
  r.new_tensors = [](const LayerContext& ctx) {
    auto tensors = recipes::hedgehog_map_tensors(ctx);
    const std::int64_t heads = ctx.config.num_attention_heads;
    const double w0 = ctx.params.at("window_factor_init").get<double>();
    tensors.push_back(recipes::filled(names::kWindowFactors, {heads}, w0));
    return tensors;
  };
  r.check_source = recipes::require_default_attention_scale;
  r.make_mixer = [](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    return std::make_unique<LolcatsMixer>(source, ctx.params.at("window").get<std::int64_t>(), t);
  };
  // The linear part in its masked quadratic form over the call (cache + new keys): query i reads the state and
  // every key with cached + i - j >= window; the keys that leave the window in this call enter the state.
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const std::int64_t H = c.num_attention_heads, D = c.head_dim;
    const std::int64_t window = layer.params().at("window").get<std::int64_t>();
    const std::int64_t F = 2 * recipes::hedgehog_feature_dim(c, layer.params());
    const auto h = layer.project_heads(x);
    const auto q = layer.rope(h.q);
    const auto w = layer.window_branch(q, layer.rope(h.k), h.v, window);
    const auto phi_q = layer.hedgehog_map(q, layer.recipe_tensor(names::kFeatureMapQWeight));
    const auto phi_k = layer.hedgehog_map(layer.repeat_kv(w.keys), layer.recipe_tensor(names::kFeatureMapKWeight));
    const auto per_head_values = layer.repeat_kv(w.values);
    // [v, 1]: the ones column's sums are the normaliser's linear part (the state's last column).
    const auto ones_shape = o.concat({o.op("Shape", {per_head_values}, {{"end", std::int64_t{3}}}), o.i64({1})}, 0);
    const auto values_one = o.concat({per_head_values, o.op("Expand", {o.f32(1.0f), ones_shape})}, -1);
    // Keys past the window of query i (padded ones never count): [B, 1, S, T].
    const auto left = o.op("And", {o.op("GreaterOrEqual", {w.back, o.scalar_i64(window)}), w.key_valid});
    const auto scores = o.op("Where", {left, o.matmul(phi_q, o.transpose(phi_k, {0, 1, 3, 2})), o.f32(0.0f)});
    const auto state = layer.state("recurrent", {"batch", H, F, D + 1});
    const auto lin = o.add(o.matmul(phi_q, state), o.matmul(scores, values_one));  // [B, H, S, D + 1]
    const auto factor = o.sigmoid(o.reshape(layer.recipe_tensor(names::kWindowFactors), {1, H, 1, 1}));
    const auto y = o.div(o.add(o.mul(factor, w.numerator), o.slice(lin, -1, 0, D)),
                         o.add(o.mul(factor, w.denominator), o.slice(lin, -1, D, D + 1)));
    // The keys past the window of the call's last query enter the state: [B, 1, T, 1].
    const auto last_back = o.slice(w.back, 0, -1, std::numeric_limits<std::int64_t>::max());  // [1, T]
    const auto leaving = o.op("And", {o.op("GreaterOrEqual", {last_back, o.scalar_i64(window)}), w.key_valid});
    const auto entering = o.transpose(o.cast(leaving, onnx_model::ElementType::f32), {0, 1, 3, 2});
    const auto written = o.matmul(o.transpose(phi_k, {0, 1, 3, 2}), o.mul(values_one, entering));
    layer.set_state("recurrent", o.add(state, written), {"batch", H, F, D + 1});
    return layer.project_output(y);
  };
  return r;
}

}  // namespace linearize
