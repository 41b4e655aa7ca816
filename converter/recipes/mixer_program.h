// A recipe's layer written once (docs/recipes.md#mixer-programs): each recipe states its mixer as one
// function template over a backend of primitives,
//
//   struct SomeProgram {
//     static constexpr const char* kind = "some-recipe";
//     template <class Ops> static typename Ops::Value run(Ops& o, const typename Ops::Value& x);
//   };
//
// and the backends instantiate it: recipes::TorchMixerOps (at::Tensor values, the kernels' forms and fused
// decode steps: training, verify, generate), recipes::OnnxMixerOps (value names in an ONNX graph:
// export-onnx) and recipes::ProgramRecorder (the program as JSON, which the transformers export's modeling
// file interprets). program_recipe() makes the Recipe's make_mixer, emit_onnx and describe from one program,
// so a recipe's mathematics exists once; a new backend is one more Ops class, not a member in every recipe.
//
// The primitives, the same in both backends (x [B, T, hidden] normed; "heads" values [.., H, .., D] in the
// backend's own layout, which a program never sees):
//   params(), heads(), kv_heads(), head_dim()       the recipe's resolved parameters and the layer's shape
//   project_heads(x) -> {q, k, v}                   the source attention's projections (q/k norms included)
//   project_weights(x) -> {q, k, v}                 the same through the weights alone (no biases, no q/k norm)
//   rope, repeat_kv, fp32, merge_heads, split_heads RoPE at the call's positions; kv heads to query heads;
//                                                   at least fp32 (bf16 models compute maps and gates in
//                                                   fp32); heads <-> [.., H D] per token
//   linear(v, w[, b]), per_head(x, w, b), head_param(w)   a recipe tensor as a projection, as one value per
//                                                   head and token ([.., H, .., 1]), as a per-head factor
//   hedgehog(v, w), softmax_d, silu, sigmoid, softplus, log_sigmoid, relu, exp, neg, add, mul, div
//   l2_normalize, rms_normalize, layer_normalize    over the last axis, no weight
//   linear_attention, delta_rule, short_conv        the recurrences (state carried between calls; a padded
//   liger_hybrid, lolcats_hybrid                    token neither writes nor decays: the token mask is
//                                                   applied inside them, so no program can forget it)
//   capture(name, v), project_output(heads)         an intermediate for verify / attention transfer; o_proj
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "converter/onnx_graph.h"
#include "converter/recipes/onnx_mixer_ops.h"
#include "converter/recipes/program_recorder.h"
#include "converter/recipes/recipe.h"
#include "converter/recipes/torch_mixer_ops.h"

namespace linearize::recipes {

// A program fragment: y (per token, H D wide) through an RMSNorm with the layer's `weight`, back into heads, then
// W_O (transnormer's NormAttention).
template <class Ops>
typename Ops::Value normed_output(Ops& o, const typename Ops::Value& y, double eps, const std::string& weight) {
  const auto normed = o.mul(o.rms_normalize(y, eps), o.param(weight));
  return o.project_output(o.split_heads(normed, o.head_dim()));
}

// A Recipe whose make_mixer and emit_onnx both run Program (its name, summary, params, new_tensors and
// check_source already set in `r`).
template <class Program>
Recipe program_recipe(Recipe r) {
  const auto new_tensors = r.new_tensors;
  r.make_mixer = [new_tensors](const LayerContext& ctx, const SoftmaxAttentionMixer& source, const LayerTensors& t) {
    std::vector<std::string> order;  // trainable() in the order the recipe declares its tensors
    for (const auto& n : new_tensors(ctx)) order.push_back(n.name);
    return std::make_unique<ProgramMixer<Program>>(ProgramLayer(source, t, std::move(order), ctx.params));
  };
  r.emit_onnx = [](OnnxLayer& layer, const std::string& x) {
    OnnxMixerOps o(layer);
    return Program::run(o, x);
  };
  r.describe = [new_tensors](const ModelConfig& config, const RecipeParams& params) {
    ProgramRecorder o(config, params);
    auto record = o.record(Program::run(o, ProgramRecorder::kInput));
    record["kind"] = Program::kind;
    auto& shapes = record["tensors"] = nlohmann::json::object();  // the layer's new tensors, as the modeling file declares them
    for (const auto& t : new_tensors(LayerContext{config, 0, params})) shapes[t.name] = t.shape;
    return record;
  };
  return r;
}

}  // namespace linearize::recipes
