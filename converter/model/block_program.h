// The decoder block written once (docs/architecture.md, "One model, pluggable token mixers"): norm -> token mixer
// -> residual -> norm -> gated MLP -> residual, with Gemma's sandwich norms where the BlockSpec says so. CausalLM
// (tensors) and export-onnx (value names in the graph) instantiate it with their own four primitives:
//   norm(x, which)   the layer's RMSNorm `which` (plain or (1+w), the family's)
//   mixer(x)         the layer's token mixer (the source's attention or the recipe's program)
//   mlp(x)           the gated MLP
//   add(a, b)        the residual
#pragma once

#include "converter/architectures/architecture.h"
#include "converter/names.h"

namespace linearize {

// The block's RMSNorms by their Hugging Face names: input_layernorm, post_attention_layernorm (the MLP's input
// norm, or with the sandwich the mixer's output norm), pre/post_feedforward_layernorm (sandwich only).
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

// attn_out and mlp_out are the mixer's and the MLP's own outputs (what verify and distill compare): the
// sandwich's output norms act after them.
template <class Value>
struct BlockValues {
  Value attn_in, attn_out, mlp_out, out;
};

template <class Ops>
BlockValues<typename Ops::Value> block_program(Ops& o, const BlockSpec& block, const typename Ops::Value& x) {
  const bool sandwich = block.sandwich_norms;
  const auto normed = o.norm(x, BlockNorm::input);
  const auto attn = o.mixer(normed);
  const auto mid = o.add(x, sandwich ? o.norm(attn, BlockNorm::post_attention) : attn);
  const auto mlp = o.mlp(o.norm(mid, sandwich ? BlockNorm::pre_feedforward : BlockNorm::post_attention));
  return {normed, attn, mlp, o.add(mid, sandwich ? o.norm(mlp, BlockNorm::post_feedforward) : mlp)};
}

}  // namespace linearize
