// The ONNX backend of the mixer programs (converter/recipes/mixer_program.h): values are names in the export's
// graph, heads first ([B, H, S, D]; one value per head and token is [B, H, S, 1]); the recurrences are
// onnx_linear_attention / onnx_delta_rule (a Scan of standard operators, or ONNX's LinearAttention operator)
// with their states as the graph's past.{i}.* inputs and present.{i}.* outputs, and every recurrence applies
// the token mask (attention_mask's last S columns): a padded token neither writes nor decays.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "converter/names.h"
#include "converter/onnx_graph.h"
#include "converter/recipes/program_types.h"

namespace linearize::recipes {

class OnnxMixerOps {
 public:
  using Value = std::string;

  explicit OnnxMixerOps(OnnxLayer& layer) : layer_(layer), o_(layer.ops()) {}

  const RecipeParams& params() const { return layer_.params(); }
  double number(const std::string& key) const { return params().at(key).get<double>(); }
  std::int64_t integer(const std::string& key) const { return params().at(key).get<std::int64_t>(); }
  std::int64_t heads() const { return layer_.config().num_attention_heads; }
  std::int64_t kv_heads() const { return layer_.config().num_key_value_heads; }
  std::int64_t head_dim() const { return layer_.config().head_dim; }

  Heads<Value> project_heads(const Value& x);
  Heads<Value> project_weights(const Value& x);
  Value rope(const Value& heads) { return layer_.rope(heads); }
  Value repeat_kv(const Value& heads) { return layer_.repeat_kv(heads); }
  static Value fp32(const Value& v) { return v; }  // the graph computes in fp32 throughout
  Value merge_heads(const Value& heads) { return o_.tokens_first(heads); }
  Value split_heads(const Value& v, std::int64_t dim) { return o_.transpose(o_.reshape(v, {0, 0, -1, dim}), {0, 2, 1, 3}); }

  Value linear(const Value& v, const std::string& weight, const std::string& bias = "");
  Value per_head(const Value& x, const std::string& weight, const std::string& bias);
  Value param(const std::string& name) { return layer_.recipe_tensor(name); }
  Value head_param(const std::string& name) { return o_.reshape(layer_.recipe_tensor(name), {1, -1, 1, 1}); }
  Value hedgehog(const Value& heads, const std::string& weight) { return layer_.hedgehog_map(heads, layer_.recipe_tensor(weight)); }

  Value softmax_d(const Value& v) { return o_.softmax(v); }
  Value silu(const Value& v) { return o_.mul(v, o_.sigmoid(v)); }
  Value sigmoid(const Value& v) { return o_.sigmoid(v); }
  Value softplus(const Value& v) { return o_.op("Softplus", {v}); }
  Value log_sigmoid(const Value& v) { return o_.neg(o_.op("Softplus", {o_.neg(v)})); }
  Value relu(const Value& v) { return o_.op("Relu", {v}); }
  Value exp(const Value& v) { return o_.exp(v); }
  Value neg(const Value& v) { return o_.neg(v); }
  Value add(const Value& a, const Value& b) { return o_.add(a, b); }
  Value mul(const Value& a, const Value& b) { return o_.mul(a, b); }
  Value div(const Value& a, double b) { return o_.div(a, o_.f32(static_cast<float>(b))); }
  Value l2_normalize(const Value& v, double eps);
  Value rms_normalize(const Value& v, double eps) { return o_.rms_normalize(v, eps); }
  Value layer_normalize(const Value& v, double eps);

  Value linear_attention(const Value& q, const Value& k, const Value& v, const Value& decay, const Recurrence& r);
  Value delta_rule(const Value& q, const Value& k, const Value& v, const Value& beta, const Value& decay, const Recurrence& r);
  std::vector<Value> short_conv(const std::vector<HeadsOf<Value>>& heads, const std::string& weight, const std::string& bias);
  Value liger_hybrid(const LigerParts<Value>& in, std::int64_t window);
  template <class FeatureMap>
  Value lolcats_hybrid(const Value& q, const Value& k, const Value& v, const Value& phi_q, FeatureMap phi_k,
                       const std::string& window_factors, std::int64_t window, std::int64_t features) {
    const auto w = layer_.window_branch(q, k, v, window);
    return lolcats_mix(w, phi_q, phi_k(w.keys), window_factors, window, features);
  }

  void capture(names::MixerCapture, const Value&) const {}  // the graph has no capture hook
  Value project_output(const Value& heads) { return layer_.project_output(heads); }

 private:
  // LoLCATs' linear part over the keys past the window and the shared normaliser (the state [B, H, F, V + 1]).
  Value lolcats_mix(const OnnxLayer::WindowBranch& w, const Value& phi_q, const Value& phi_k,
                    const std::string& window_factors, std::int64_t window, std::int64_t features);
  std::vector<Dim> state_shape(const Recurrence& r) const { return {"batch", r.state_heads, r.key_dim, r.value_dim}; }
  OnnxLinearAttentionOptions options(const Recurrence& r) const;

  OnnxLayer& layer_;
  OnnxOps& o_;
};

}  // namespace linearize::recipes
