// Hedgehog (research/linearization.md 3; Zhang et al. 2024): pure normalised linear attention with the
// Hedgehog map per query head, phi(x) = [softmax(xW), softmax(-xW)] on RoPE'd q and k (as LoLCATs feeds
// its maps), W truncated-identity at conversion:
//   o_n = sum_{j<=n} phi(q_n).phi(k_j) v_j / sum_{j<=n} phi(q_n).phi(k_j).
#include "converter/onnx_graph.h"
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/recipe.h"
#include "kernels/feature_maps.h"

namespace linearize {
namespace {

class HedgehogMixer final : public TokenMixer {
 public:
  HedgehogMixer(const SoftmaxAttentionMixer& source, const LayerTensors& t)
      : source_(source), map_q_(t.at(names::kFeatureMapQWeight)), map_k_(t.at(names::kFeatureMapKWeight)) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    auto* st = static_cast<recipes::LinearMixerState*>(state);
    const auto in = features(x, start);
    kernels::LinearAttentionOptions options;
    options.form = recipes::form_for(call, x.size(1), state);
    options.scale = 1.0;
    options.normalize = true;  // the features are positive (softmaxes), so the denominator is too
    auto lin = kernels::linear_attention(in, st ? st->linear : kernels::LinearState{}, options);
    if (call.capture) call.capture(names::capture(call.scope, names::MixerCapture::o_lin), lin.o);
    if (st) st->linear = std::move(lin.state);
    return source_.project_output(lin.o.to(x.scalar_type()));
  }

  // a_ij = phi(q_i).phi(k_j) / sum_{j' <= i} phi(q_i).phi(k_j') (the forward's normaliser without fla's eps).
  at::Tensor attention_weights(const at::Tensor& x) const override {
    const auto in = features(x, 0);
    const auto kernel = recipes::pairwise(in.q, in.k).tril();
    return kernel / kernel.sum(-1, /*keepdim=*/true);
  }

  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<recipes::LinearMixerState>(); }
  std::string kind() const override { return "hedgehog"; }
  const SoftmaxAttentionMixer& source_attention() const override { return source_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override {
    return {{names::kFeatureMapQWeight, map_q_}, {names::kFeatureMapKWeight, map_k_}};
  }

 private:
  // phi(q), phi(k) and v of x at positions start.., all per query head.
  kernels::LinearAttentionInputs features(const at::Tensor& x, std::int64_t start) const {
    const std::int64_t H = source_.shape().heads;
    const auto h = source_.project_heads(x);
    const auto cs = source_.cos_sin(start, x.size(1), x);
    kernels::LinearAttentionInputs in;
    // The maps run in fp32 at least (a bf16 model's maps are loaded in bf16: cast, as lolcats does).
    const auto q = recipes::at_least_fp32(recipes::rope_bthd(h.q, cs));
    const auto k = recipes::repeat_heads(recipes::at_least_fp32(recipes::rope_bthd(h.k, cs)), H);
    in.q = kernels::hedgehog(q, map_q_.to(q.scalar_type()));
    in.k = kernels::hedgehog(k, map_k_.to(k.scalar_type()));
    in.v = recipes::repeat_heads(h.v, H);
    return in;
  }

  SoftmaxAttentionMixer source_;
  at::Tensor map_q_, map_k_;
};

}  // namespace

Recipe hedgehog_recipe() {
  Recipe r;
  r.name = "hedgehog";
  r.summary = "normalised linear attention with learned Hedgehog maps per head";
  r.params = {{"feature_dim", nullptr, "Hedgehog map width f per half (null: head_dim / 2)", true}};
  r.new_tensors = recipes::hedgehog_map_tensors;
  r.make_mixer = [](const LayerContext&, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    return std::make_unique<HedgehogMixer>(source, t);
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    auto& o = layer.ops();
    const auto& c = layer.config();
    const auto h = layer.project_heads(x);
    const auto phi_q = layer.hedgehog_map(layer.rope(h.q), layer.recipe_tensor(names::kFeatureMapQWeight));
    // A padded token writes nothing: its features are zeroed (the normaliser's sum too).
    const auto phi_k = o.mul(layer.hedgehog_map(layer.repeat_kv(layer.rope(h.k)), layer.recipe_tensor(names::kFeatureMapKWeight)),
                             layer.token_mask());
    const std::int64_t H = c.num_attention_heads;
    auto options = layer.linear_attention_options();
    options.kv_heads = H;  // the maps are per query head, so the state is too (as HedgehogMixer's)
    options.key_dim = 2 * recipes::hedgehog_feature_dim(c, layer.params());
    options.value_dim = c.head_dim;
    const auto state = layer.state("recurrent", {"batch", H, options.key_dim, c.head_dim});
    const auto normalizer = layer.state("normalizer", {"batch", H, options.key_dim});
    const auto lin = onnx_linear_attention(o, phi_q, phi_k, layer.repeat_kv(h.v), std::nullopt, state, normalizer, options);
    layer.set_state("recurrent", lin.state, {"batch", H, options.key_dim, c.head_dim});
    layer.set_state("normalizer", lin.normalizer, {"batch", H, options.key_dim});
    return layer.project_output(lin.o);
  };
  return r;
}

}  // namespace linearize
