// Building a decoder's ONNX graph (converter/onnx_export.cpp) and a recipe's mixer in it (Recipe::emit_onnx):
// ONNX operators as functions on value names, the source attention's pieces (projections, q/k norms, RoPE,
// o_proj) in the graph, and the forms the recipes share, written with standard operators only:
//   chunked linear attention   a Scan over chunks of C tokens carrying the state [B, Hkv, K, V] (and the
//                              normaliser's [B, Hkv, K]); inside a chunk the masked quadratic form, every
//                              exponent b_t - b_s <= 0 (docs/recipes.md#gates-in-log-space), so nothing overflows;
//   window attention           softmax over the cached window keys and the call's, with a mask of
//                              relative positions (no absolute position needed).
// Layout inside mixers: heads first, [B, H, S, D]; `S` is dynamic (S > 1 prefill, S = 1 decode).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "converter/model_config.h"
#include "converter/names.h"
#include "converter/recipes/recipe.h"
#include "formats/checkpoint.h"
#include "formats/onnx_model.h"

namespace linearize {

using onnx_model::Attribute;
using onnx_model::Dim;

// ONNX operators on one graph (the model's or a Scan body's); constants are initializers of the model,
// which every subgraph may read.
class OnnxOps {
 public:
  // `half_matrices`: the weight values stored in fp16, whose products linear() takes in fp16.
  OnnxOps(onnx_model::Model& model, onnx_model::Graph& graph, const std::set<std::string>* half_matrices = nullptr)
      : model_(model), graph_(graph), half_matrices_(half_matrices) {}
  OnnxOps in(onnx_model::Graph& graph) const { return OnnxOps(model_, graph, half_matrices_); }
  bool is_half(const std::string& value) const { return half_matrices_ && half_matrices_->count(value) != 0; }
  onnx_model::Graph& graph() { return graph_; }
  onnx_model::Model& model() { return model_; }

  std::string op(const std::string& type, const std::vector<std::string>& inputs, const std::vector<Attribute>& attributes = {}) {
    return graph_.node(type, inputs, attributes);
  }
  std::string i64(const std::vector<std::int64_t>& values);  // a 1-D int64 constant
  std::string scalar_i64(std::int64_t value);                // a 0-D int64 constant
  std::string f32(float value);                              // a 0-D float constant

  std::string add(const std::string& a, const std::string& b) { return op("Add", {a, b}); }
  std::string sub(const std::string& a, const std::string& b) { return op("Sub", {a, b}); }
  std::string mul(const std::string& a, const std::string& b) { return op("Mul", {a, b}); }
  std::string div(const std::string& a, const std::string& b) { return op("Div", {a, b}); }
  std::string matmul(const std::string& a, const std::string& b) { return op("MatMul", {a, b}); }
  std::string exp(const std::string& a) { return op("Exp", {a}); }
  std::string neg(const std::string& a) { return op("Neg", {a}); }
  std::string sigmoid(const std::string& a) { return op("Sigmoid", {a}); }
  std::string softmax(const std::string& a, std::int64_t axis = -1) { return op("Softmax", {a}, {{"axis", axis}}); }
  std::string cast(const std::string& a, onnx_model::ElementType to) {
    return op("Cast", {a}, {{"to", static_cast<std::int64_t>(to)}});
  }
  std::string transpose(const std::string& a, const std::vector<std::int64_t>& perm) { return op("Transpose", {a}, {{"perm", perm}}); }
  // Reshape to `shape` (0 copies the input's dim, -1 is inferred).
  std::string reshape(const std::string& a, const std::vector<std::int64_t>& shape) { return op("Reshape", {a, i64(shape)}); }
  std::string unsqueeze(const std::string& a, const std::vector<std::int64_t>& axes) { return op("Unsqueeze", {a, i64(axes)}); }
  std::string squeeze(const std::string& a, const std::vector<std::int64_t>& axes) { return op("Squeeze", {a, i64(axes)}); }
  std::string concat(const std::vector<std::string>& parts, std::int64_t axis) { return op("Concat", parts, {{"axis", axis}}); }
  // Heads first [B, H, S, D] -> tokens first [B, S, H D].
  std::string tokens_first(const std::string& heads) { return reshape(transpose(heads, {0, 2, 1, 3}), {0, 0, -1}); }
  // a[start:end] along `axis` (negative counts from the end; end clamps).
  std::string slice(const std::string& a, std::int64_t axis, std::int64_t start, std::int64_t end) {
    return op("Slice", {a, i64({start}), i64({end}), i64({axis})});
  }
  std::string slice(const std::string& a, std::int64_t axis, const std::string& start, const std::string& end) {
    return op("Slice", {a, start, end, i64({axis})});
  }
  // a[start::step] along `axis`.
  std::string strided(const std::string& a, std::int64_t axis, std::int64_t start, std::int64_t step) {
    return op("Slice", {a, i64({start}), i64({std::numeric_limits<std::int64_t>::max()}), i64({axis}), i64({step})});
  }
  std::string reduce_sum(const std::string& a, std::int64_t axis, bool keep = true) {
    return op("ReduceSum", {a, i64({axis})}, {{"keepdims", std::int64_t{keep}}});
  }
  std::string reduce_mean(const std::string& a, std::int64_t axis, bool keep = true) {
    return op("ReduceMean", {a, i64({axis})}, {{"keepdims", std::int64_t{keep}}});
  }
  std::string reduce_max(const std::string& a, std::int64_t axis, bool keep = true) {
    return op("ReduceMax", {a, i64({axis})}, {{"keepdims", std::int64_t{keep}}});
  }
  // Shape(a)[axis] as a 1-D int64 tensor of one element.
  std::string dim(const std::string& a, std::int64_t axis) {
    return op("Shape", {a}, {{"start", axis}, {"end", axis == -1 ? std::int64_t{std::numeric_limits<std::int32_t>::max()} : axis + 1}});
  }
  // x W^T (+ b) for x [..., in] and a stored [out, in] weight (kept in its layout: one copy, shared when tied).
  // An empty `bias` is none. With an fp16 W, x is rounded to fp16 for the product and the result comes back
  // in fp32.
  std::string linear(const std::string& x, const std::string& weight, const std::string& bias = "");
  // RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) times w (or 1 + w, Gemma's).
  std::string rms_norm(const std::string& x, const std::string& weight, double eps, NormStyle style);
  // The same without a weight (Mamba-2's and the q/k norms' core).
  std::string rms_normalize(const std::string& x, double eps);

 private:
  onnx_model::Model& model_;
  onnx_model::Graph& graph_;
  const std::set<std::string>* half_matrices_;
};

// How a recurrence is written into the graph (onnx_linear_attention, onnx_delta_rule below).
struct OnnxLinearAttentionOptions {
  std::int64_t kv_heads = 0, groups = 1, key_dim = 0, value_dim = 0;  // Hkv, Hq / Hkv, K, V
  bool decay_per_channel = false;  // log decay [.., K] (GLA) rather than [.., 1] (one per head)
  double scale = 1.0;
  double eps = 1e-10;
  std::int64_t chunk_size = 64;
  // ONNX's LinearAttention operator (opset 27) instead of the Scan of standard operators, where it covers the
  // recurrence (no normaliser); the states keep their layout, so both graphs take the same inputs.
  bool use_operator = false;
};

// The model-wide part of the graph every layer reads: the inputs, the weights already in the graph, the RoPE
// tables per configuration, and the state inputs and outputs declared so far.
struct OnnxModelContext {
  OnnxModelContext(onnx_model::Model& m, const ModelConfig& c, const CheckpointWeights& w, bool half)
      : model(m), ops(m, m.graph(), &half_matrices), config(c), checkpoint(w), fp16_matrices(half) {}

  onnx_model::Model& model;
  OnnxOps ops;
  const ModelConfig& config;
  const CheckpointWeights& checkpoint;
  std::string input_ids = "input_ids", attention_mask = "attention_mask", position_ids = "position_ids";
  std::map<std::string, std::string> weights;  // tensor name -> its fp32 value
  std::map<std::string, onnx_model::ElementType> stored_types;  // tensor name -> its initializer's type
  std::map<std::string, std::pair<std::string, std::string>> cos_sin;
  std::optional<std::string> token_mask;       // [B, 1, S, 1]
  std::int64_t opset = 0;
  bool fp16_matrices = false;                  // --dtype fp16: the projections and embeddings stored in fp16
  std::set<std::string> half_matrices;
  bool linear_attention_operator = false;      // recurrences through ONNX's LinearAttention (opset 27)
  // What each layer carries between calls: the kinds of its past.{i}.<kind> states, and kKeyValues for a
  // past_key_values.{i} cache (genai_config.json is written only where onnxruntime-genai can carry them all).
  std::map<std::int64_t, std::set<std::string>> carried;
  static constexpr const char* kKeyValues = "key/value cache";

  // A checkpoint tensor as an initializer (its bytes as stored, named as in model.safetensors), and its type.
  std::pair<std::string, onnx_model::ElementType> stored(const std::string& name);
  // stored(name) cast to fp32 in the graph when stored narrower.
  std::string weight(const std::string& name);
  // A projection or embedding matrix: weight(name), or with fp16_matrices the tensor rounded to fp16 (InputError
  // when a value does not fit fp16's range).
  std::string matrix(const std::string& name);
  // cos and sin [B, 1, S, rotary_dim] at position_ids for one RoPE configuration.
  std::pair<std::string, std::string> rope_tables(const RopeConfig& rope, std::int64_t head_dim);
  std::string mask_of_tokens();
};

// What a recipe's emit_onnx has at hand for one converted layer.
class OnnxLayer {
 public:
  OnnxLayer(OnnxModelContext& context, std::int64_t layer, const RecipeParams& params)
      : context_(context), layer_(layer), params_(params) {}

  const ModelConfig& config() const { return context_.config; }
  std::int64_t index() const { return layer_; }
  const RecipeParams& params() const { return params_; }
  std::int64_t opset() const { return context_.opset; }
  OnnxOps& ops() { return context_.ops; }
  // Options of onnx_linear_attention / onnx_delta_rule with the export's choice of form.
  OnnxLinearAttentionOptions linear_attention_options() const;

  // The layer's weights in the graph (fp32): the source attention's module weight or bias, a recipe tensor.
  std::string weight(names::LayerModule module);
  std::string bias(names::LayerModule module);  // empty when the checkpoint has none
  std::string recipe_tensor(const std::string& name);
  std::vector<std::int64_t> recipe_tensor_shape(const std::string& name) const;
  // A routed MoE layer's matrices: the router (and its bias, empty when none), and expert e's projection; or, for
  // stacked experts (gpt-oss), one stacked tensor.
  std::string router();
  std::string router_bias();
  std::string expert(std::int64_t e, names::ExpertProjection projection);
  std::string stacked_expert(std::int64_t e, names::StackedExperts tensor);  // expert e's slice, fp32
  std::string attention_sinks();  // [H], the source attention's (gpt-oss)

  // The source attention's heads of x [B, S, hidden]: q [B, H, S, D], k and v [B, Hkv, S, D] (after q/k
  // norms, before RoPE); RoPE at the call's positions; o [B, H, S, D] -> o_proj -> [B, S, hidden].
  struct Heads {
    std::string q, k, v;
  };
  Heads project_heads(const std::string& x);
  // q, k, v through the weights alone: no biases, no q/k norm (SoftmaxAttentionMixer::project_weights).
  Heads project_weights(const std::string& x);
  std::string rope(const std::string& heads);
  std::string project_output(const std::string& heads);
  // [B, Hkv, S, D] -> [B, H, S, D]: query head h reads kv head h / G (recipes whose maps are per query head).
  std::string repeat_kv(const std::string& heads);
  // x [B, S, hidden] -> x W^T + b -> [B, heads, S, 1]: a value per head and token (gates, dt, beta).
  std::string per_head(const std::string& x, const std::string& weight, const std::string& bias);
  // The Hedgehog map per head (kernels::hedgehog): [softmax(x W), softmax(-x W)] for x [B, H, S, d], W [H, d, f].
  std::string hedgehog_map(const std::string& heads, const std::string& weight);

  // The call's tokens that are not padding, [B, 1, S, 1] fp32 (attention_mask's last S columns).
  std::string token_mask() { return context_.mask_of_tokens(); }
  // A state this layer carries between calls: graph input past.{i}.<kind> and output present.{i}.<kind>, fp32,
  // `shape` with "batch" as its first dim. state() returns the past value; set_state() names the present one.
  std::string state(const std::string& kind, const std::vector<Dim>& shape);
  void set_state(const std::string& kind, const std::string& value, const std::vector<Dim>& shape);
  // The window branch of the hybrids (Liger, LoLCATs) over the cached keys (past_key_values.{i}.key/.value
  // [B, Hkv, n <= window, D]) and the call's (q, k RoPE'd): query i, at index n + i of the keys, sees key j when
  // 0 <= n + i - j < window and j is not padding (its own key always), with softmax's exp(s_ij - c_i), c_i the
  // row max. Writes present.{i}.key/.value, the last `window` keys. Returns the numerator [B, H, S, D] and
  // denominator [B, H, S, 1], and for the linear part over the keys that left the window: n + i - j [S, T], the
  // keys' validity [B, 1, 1, T] (bool) and the keys and values [B, Hkv, T, D].
  struct WindowBranch {
    std::string numerator, denominator, back, key_valid, keys, values;
  };
  WindowBranch window_branch(const std::string& q, const std::string& k, const std::string& v, std::int64_t window);

 private:
  Heads project(const std::string& x, bool with_bias);

  OnnxModelContext& context_;
  std::int64_t layer_;
  const RecipeParams& params_;
};

// The shared forms (module comment). Linear attention: o [B, Hq, S, V] of q [B, Hq, S, K], k [B, Hkv, S, K],
// v [B, Hkv, S, V], an optional log decay <= 0 per key channel [B, Hkv, S, K] or per head [B, Hkv, S, 1], from
// `state` [B, Hkv, K, V] (and `normalizer` [B, Hkv, K] when normalised); returns the output and the states
// after the call. scale multiplies q.k; with a normalizer: o / (scale q.z + eps) as kernels/linear_attention.h.
struct OnnxLinearAttention {
  std::string o, state, normalizer;
};
OnnxLinearAttention onnx_linear_attention(OnnxOps& ops, const std::string& q, const std::string& k, const std::string& v,
                                          const std::optional<std::string>& log_decay, const std::string& state,
                                          const std::optional<std::string>& normalizer,
                                          const OnnxLinearAttentionOptions& options);

// The gated delta rule (kernels/delta_rule.h) in its chunked WY form: beta and log decay [B, Hkv, S, 1], the
// state [B, Hkv, K, V]; q unit-norm per head as the kernel expects.
OnnxLinearAttention onnx_delta_rule(OnnxOps& ops, const std::string& q, const std::string& k, const std::string& v,
                                    const std::string& beta, const std::string& log_decay, const std::string& state,
                                    const OnnxLinearAttentionOptions& options);


}  // namespace linearize
