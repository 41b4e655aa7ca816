// LoLCATs (arXiv 2410.10254, docs/recipes.md#lolcats; HazyResearch/lolcats, the `sw` window): per layer and query head,
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

#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

struct LolcatsProgram {
  static constexpr const char* kind = "lolcats";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const auto h = o.project_heads(x);
    // The maps compute in q's dtype (fp32, or fp64 in verify's rebuilt mixer), whatever the model's.
    const auto q = o.fp32(o.rope(h.q));
    const auto phi_k = [&o](const auto& keys) { return o.hedgehog(o.repeat_kv(keys), names::kFeatureMapKWeight); };
    const auto y = o.lolcats_hybrid(q, o.rope(h.k), h.v, o.hedgehog(q, names::kFeatureMapQWeight), phi_k,
                                    names::kWindowFactors, o.integer("window"),
                                    2 * recipes::hedgehog_feature_dim(o.head_dim(), o.params()));
    o.capture(names::MixerCapture::y, y);
    return o.project_output(y);
  }

  // The output's weights with the shared normaliser, as LoLCATs' hybrid_attention_quadratic returns them for
  // its xent (lolcats:src/model/linear_attention/linear_window_attention_sw.py): with w_ij = exp(s_ij - c_i)
  // for i - window < j <= i and l_ij = phi_q(q_i).phi_k(k_j) for j <= i - window,
  //   a_ij = (g_h w_ij + l_ij) / sum_j' (g_h w_ij' + l_ij').
  static at::Tensor attention_weights(recipes::TorchMixerOps& o, const at::Tensor& x) {
    const std::int64_t T = x.size(1), window = o.integer("window");
    const auto h = o.project_heads(x);
    const auto q = o.fp32(o.rope(h.q));
    const auto k = o.repeat_kv(o.fp32(o.rope(h.k)));
    const auto positions = at::arange(T, x.options().dtype(at::kLong));
    const auto back = positions.unsqueeze(1) - positions.unsqueeze(0);  // i - j
    const auto outside_window = back.lt(0).logical_or(back.ge(window));
    const auto scores = recipes::pairwise(q, k).mul(o.attention_scale())
                            .masked_fill(outside_window, -std::numeric_limits<double>::infinity());
    const auto win = (scores - std::get<0>(scores.max(-1, /*keepdim=*/true))).exp();  // c_i: the window's row max
    const auto lin = recipes::pairwise(o.hedgehog(q, names::kFeatureMapQWeight), o.hedgehog(k, names::kFeatureMapKWeight))
                         .masked_fill(back.lt(window), 0);
    const auto mixed = at::sigmoid(o.param(names::kWindowFactors)).view({1, -1, 1, 1}) * win + lin;
    return mixed / mixed.sum(-1, /*keepdim=*/true);
  }
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
  return recipes::program_recipe<LolcatsProgram>(std::move(r));
}

}  // namespace linearize
