// Hedgehog (Zhang et al. 2024, arXiv 2402.04347; docs/recipes.md#hedgehog): pure normalised linear attention with the
// Hedgehog map per query head, phi(x) = [softmax(xW), softmax(-xW)] on RoPE'd q and k (as LoLCATs feeds
// its maps), W truncated-identity at conversion:
//   o_n = sum_{j<=n} phi(q_n).phi(k_j) v_j / sum_{j<=n} phi(q_n).phi(k_j).
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

struct HedgehogProgram {
  static constexpr const char* kind = "hedgehog";

  // phi(q), phi(k) and v of x, all per query head; the maps run in fp32 at least.
  template <class Ops>
  static recipes::Heads<typename Ops::Value> features(Ops& o, const typename Ops::Value& x) {
    const auto h = o.project_heads(x);
    return {o.hedgehog(o.fp32(o.rope(h.q)), names::kFeatureMapQWeight),
            o.hedgehog(o.repeat_kv(o.fp32(o.rope(h.k))), names::kFeatureMapKWeight), o.repeat_kv(h.v)};
  }

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const auto f = features(o, x);
    // Per query head, as the maps are; normalised (the features are softmaxes, so the denominator is positive).
    recipes::Recurrence state{o.heads(), 2 * recipes::hedgehog_feature_dim(o.head_dim(), o.params()), o.head_dim()};
    state.normalize = true;
    const auto lin = o.linear_attention(f.q, f.k, f.v, {}, state);
    o.capture(names::MixerCapture::o_lin, lin);
    return o.project_output(lin);
  }

  // a_ij = phi(q_i).phi(k_j) / sum_{j' <= i} phi(q_i).phi(k_j') (the forward's normaliser without fla's eps).
  static at::Tensor attention_weights(recipes::TorchMixerOps& o, const at::Tensor& x) {
    const auto f = features(o, x);
    const auto kernel = recipes::pairwise(f.q, f.k).tril();
    return kernel / kernel.sum(-1, /*keepdim=*/true);
  }
};

}  // namespace

Recipe hedgehog_recipe() {
  Recipe r;
  r.name = "hedgehog";
  r.summary = "normalised linear attention with learned Hedgehog maps per head";
  r.params = {{"feature_dim", nullptr, "Hedgehog map width f per half (null: head_dim / 2)", true}};
  r.new_tensors = recipes::hedgehog_map_tensors;
  return recipes::program_recipe<HedgehogProgram>(std::move(r));
}

}  // namespace linearize
