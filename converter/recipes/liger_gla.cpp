// Liger-GLA (arXiv 2503.01496, OpenSparseLLMs/Linearization; docs/recipes.md#liger-gla): no new parameters. Per layer,
//   gate   log a_t = logsigmoid(pool(W_K x_t)) / 16, per key channel (the pool is an identity when its
//          output size equals the key width, as in every shipped config);
//   linear o_lin = GLA(softmax_d(q), softmax_d(k), v), scale 1, no denominator, no RoPE;
//   window o_swa = softmax attention over RoPE'd q, k in a window of 64 (its own normaliser);
//   o = 0.5 o_swa + 0.5 o_lin, then W_O.
// kernels/hybrid_attention.h computes it. Unlike the reference code, decode keeps the window's KV cache,
// so decode equals prefill.
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

struct LigerGlaProgram {
  static constexpr const char* kind = "liger-gla";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const auto h = o.project_heads(x);
    const auto k = o.fp32(h.k);
    const recipes::LigerParts<typename Ops::Value> in{o.rope(h.q), o.rope(h.k), h.v, o.softmax_d(o.fp32(h.q)), o.softmax_d(k),
                                                      o.div(o.log_sigmoid(k), o.number("gate_normalizer"))};
    const auto y = o.liger_hybrid(in, o.integer("window"));
    o.capture(names::MixerCapture::y, y);
    return o.project_output(y);
  }
};

}  // namespace

Recipe liger_gla_recipe() {
  Recipe r;
  r.name = "liger-gla";
  r.summary = "GLA with gates pooled from W_K x (logsigmoid/16) and softmax_d maps, mixed 0.5/0.5 with SWA-64";
  r.params = {{"window", 64, "sliding-window size of the softmax branch (keys n-window < j <= n)", true, false, RecipeParamRole::window},
              {"gate_normalizer", 16.0, "log a_t = logsigmoid(W_K x_t) / gate_normalizer", true}};
  r.new_tensors = [](const LayerContext&) { return std::vector<NewTensor>{}; };
  return recipes::program_recipe<LigerGlaProgram>(std::move(r));
}

}  // namespace linearize
