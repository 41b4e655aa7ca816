// TransNormer's NormAttention (Qin et al. 2022, "The Devil in Linear Transformer", arXiv 2210.10340, section 4.1):
// linear attention without the softmax normaliser (whose unbounded gradients the paper shows destabilise
// training) and a norm on the output in its place:
//   o_t = phi(q_t)^T S_t,  S_t = S_{t-1} + phi(k_t) v_t^T,  phi(x) = 1 + elu(x),  y = RMSNorm(o) w,  out = W_O y,
// the norm over each token's whole output (heads concatenated, as TransNormer's code normalises embed_dim), its
// weight trained from 1. Here on the source's RoPE'd q and k (TransNormer's own positions are LRPE; RoPE keeps
// the source's), the state per kv head (GQA), scale 1 (the norm cancels any common scale). The paper's
// DiagAttention (block-diagonal softmax in the lower layers) is not part of this recipe: it needs a block-local
// KV cache, a primitive no backend has; keep such layers as softmax_layers instead.
#include "converter/recipes/mixer_parts.h"
#include "converter/recipes/mixer_program.h"

namespace linearize {
namespace {

struct TransNormerProgram {
  static constexpr const char* kind = "transnormer";

  template <class Ops>
  static typename Ops::Value run(Ops& o, const typename Ops::Value& x) {
    const std::int64_t d = o.head_dim();
    const auto h = o.project_heads(x);
    // 1 + elu(t) = relu(t) + exp(min(t, 0)), min(t, 0) = -relu(-t): t + 1 above zero, exp(t) below.
    const auto phi = [&](const auto& t) { return o.add(o.relu(t), o.exp(o.neg(o.relu(o.neg(t))))); };
    const recipes::Recurrence state{o.kv_heads(), d, d, o.heads() / o.kv_heads()};
    const auto lin = o.linear_attention(phi(o.fp32(o.rope(h.q))), phi(o.fp32(o.rope(h.k))), h.v, {}, state);
    o.capture(names::MixerCapture::o_lin, lin);
    return recipes::normed_output(o, o.merge_heads(o.fp32(lin)), o.number("norm_eps"), names::kOutputNormWeight);
  }
};

}  // namespace

Recipe transnormer_recipe() {
  Recipe r;
  r.name = "transnormer";
  r.summary = "TransNormer's NormAttention: 1+elu maps on RoPE'd q, k, no normaliser, RMSNorm on the output";
  r.params = {{"norm_eps", 1e-6, "epsilon of the output RMSNorm", true}};
  r.new_tensors = [](const LayerContext& ctx) {
    return std::vector<NewTensor>{
        recipes::filled(names::kOutputNormWeight, {ctx.config.num_attention_heads * ctx.config.head_dim}, 1.0)};
  };
  return recipes::program_recipe<TransNormerProgram>(std::move(r));
}

}  // namespace linearize
