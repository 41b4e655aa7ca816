// The decoder block written once (docs/architecture.md, "One model, pluggable token mixers"): norm -> token mixer
// -> residual -> norm -> gated MLP -> residual, with the norms where the BlockSpec places them (pre, Gemma's sandwich,
// OLMo 2's post) and Granite's residual multiplier. CausalLM (tensors) and export-onnx (value names in the graph)
// instantiate it with their own five primitives:
//   norm(x, which)   the layer's RMSNorm `which` (the family's NormStyle)
//   mixer(x)         the layer's token mixer (the source's attention or the recipe's program)
//   mlp(x)           the gated MLP
//   scale(x, s)      x times the constant s
//   add(a, b)        the residual
#pragma once

#include "converter/architectures/architecture.h"
#include "converter/names.h"

namespace linearize {

// The block's RMSNorms by their Hugging Face names: input_layernorm (the mixer's input norm; none when post-norm),
// post_attention_layernorm (the MLP's input norm, or with the sandwich and post-norm the mixer's output norm),
// pre_feedforward_layernorm (sandwich only), post_feedforward_layernorm (the MLP's output norm: sandwich, post-norm).
enum class BlockNorm { input, post_attention, pre_feedforward, post_feedforward };

inline names::LayerModule norm_module(BlockNorm which) {
  switch (which) {
    case BlockNorm::input: return names::LayerModule::input_layernorm;
    case BlockNorm::post_attention: return names::LayerModule::post_attention_layernorm;
    case BlockNorm::pre_feedforward: return names::LayerModule::pre_feedforward_layernorm;
    case BlockNorm::post_feedforward: break;
  }
  return names::LayerModule::post_feedforward_layernorm;
}

// attn_out and mlp_out are the mixer's and the MLP's own outputs (what verify and distill compare): output norms
// and the residual multiplier act after them.
template <class Value>
struct BlockValues {
  Value attn_in, attn_out, mlp_out, out;
};

template <class Ops>
BlockValues<typename Ops::Value> block_program(Ops& o, const BlockSpec& block, const typename Ops::Value& x) {
  using Value = typename Ops::Value;
  const auto placement = block.norms;
  const auto residual = [&](const Value& base, const Value& branch, BlockNorm output_norm) {
    const auto normed = placement == NormPlacement::Pre ? branch : o.norm(branch, output_norm);
    return o.add(base, block.residual_scale == 1.0 ? normed : o.scale(normed, block.residual_scale));
  };
  const auto mixer_in = placement == NormPlacement::Post ? x : o.norm(x, BlockNorm::input);
  const auto attn = o.mixer(mixer_in);
  const auto mid = residual(x, attn, BlockNorm::post_attention);
  const auto mlp_in = placement == NormPlacement::Pre        ? o.norm(mid, BlockNorm::post_attention)
                      : placement == NormPlacement::Sandwich ? o.norm(mid, BlockNorm::pre_feedforward)
                                                             : mid;
  const auto mlp = o.mlp(mlp_in);
  return {mixer_in, attn, mlp, residual(mid, mlp, BlockNorm::post_feedforward)};
}

}  // namespace linearize
