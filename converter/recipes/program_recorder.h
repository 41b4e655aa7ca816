// The recording backend of the mixer programs (converter/recipes/mixer_program.h): runs a program on numbered
// values and writes down each primitive it calls, with its inputs, outputs and attributes (tensor names,
// numbers, a recurrence's shape), as JSON. convert stores the record in config.json (`linearize.program`),
// where verify's L0 checks it against the recipe and the export's modeling file interprets it: the Python side
// runs the same program, primitive by primitive, instead of a hand-written copy (docs/recipes.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/model_config.h"
#include "converter/names.h"
#include "converter/recipes/program_types.h"
#include "converter/recipes/recipe.h"

namespace linearize::recipes {

// The program a record computes, as one expression (each value spelled out as the op, attributes and inputs that
// make it), independent of the order the compiler evaluated a primitive's arguments in, which numbers the values
// and orders the ops: two records are the same program when their expressions are equal. Throws
// nlohmann::json::exception on a record that is not one.
std::string program_expression(const nlohmann::json& record);

class ProgramRecorder {
 public:
  using Value = std::int64_t;  // 0: none (an absent decay); the layer's input x is 1

  ProgramRecorder(const ModelConfig& config, const RecipeParams& params) : config_(config), params_(params) {}

  // {"input": 1, "output": n, "ops": [{"op", "in", "out", attributes...}, ...]}
  nlohmann::json record(Value output) const { return {{"input", kInput}, {"output", output}, {"ops", ops_}}; }
  static constexpr Value kInput = 1;

  const RecipeParams& params() const { return params_; }
  double number(const std::string& key) const { return params_.at(key).get<double>(); }
  std::int64_t integer(const std::string& key) const { return params_.at(key).get<std::int64_t>(); }
  std::int64_t heads() const { return config_.num_attention_heads; }
  std::int64_t kv_heads() const { return config_.num_key_value_heads; }
  std::int64_t head_dim() const { return config_.head_dim; }

  Heads<Value> project_heads(Value x) { return projection("project_heads", x); }
  Heads<Value> project_weights(Value x) { return projection("project_weights", x); }
  Value rope(Value v) { return unary("rope", v); }
  Value repeat_kv(Value v) { return unary("repeat_kv", v); }
  Value fp32(Value v) { return unary("fp32", v); }
  Value merge_heads(Value v) { return unary("merge_heads", v); }
  Value split_heads(Value v, std::int64_t dim) { return op("split_heads", {v}, {{"dim", dim}}); }

  Value linear(Value v, const std::string& weight, const std::string& bias = "");
  Value per_head(Value x, const std::string& weight, const std::string& bias) {
    return op("per_head", {x}, {{"weight", weight}, {"bias", bias}});
  }
  Value param(const std::string& name) { return op("param", {}, {{"tensor", name}}); }
  Value head_param(const std::string& name) { return op("head_param", {}, {{"tensor", name}}); }
  Value hedgehog(Value v, const std::string& weight) { return op("hedgehog", {v}, {{"weight", weight}}); }

  Value softmax_d(Value v) { return unary("softmax_d", v); }
  Value silu(Value v) { return unary("silu", v); }
  Value sigmoid(Value v) { return unary("sigmoid", v); }
  Value softplus(Value v) { return unary("softplus", v); }
  Value log_sigmoid(Value v) { return unary("log_sigmoid", v); }
  Value relu(Value v) { return unary("relu", v); }
  Value exp(Value v) { return unary("exp", v); }
  Value neg(Value v) { return unary("neg", v); }
  Value add(Value a, Value b) { return op("add", {a, b}); }
  Value mul(Value a, Value b) { return op("mul", {a, b}); }
  Value div(Value a, double b) { return op("div", {a}, {{"divisor", b}}); }
  Value l2_normalize(Value v, double eps) { return op("l2_normalize", {v}, {{"eps", eps}}); }
  Value rms_normalize(Value v, double eps) { return op("rms_normalize", {v}, {{"eps", eps}}); }
  Value layer_normalize(Value v, double eps) { return op("layer_normalize", {v}, {{"eps", eps}}); }

  Value linear_attention(Value q, Value k, Value v, Value decay, const Recurrence& r) {
    return op("linear_attention", {q, k, v, decay}, {{"recurrence", to_json(r)}});
  }
  Value delta_rule(Value q, Value k, Value v, Value beta, Value decay, const Recurrence& r) {
    return op("delta_rule", {q, k, v, beta, decay}, {{"recurrence", to_json(r)}});
  }
  std::vector<Value> short_conv(const std::vector<HeadsOf<Value>>& heads, const std::string& weight, const std::string& bias);
  Value liger_hybrid(const LigerParts<Value>& p, std::int64_t window) {
    return op("liger_hybrid", {p.q, p.k, p.v, p.phi_q, p.phi_k, p.log_decay}, {{"window", window}});
  }
  // phi_k is recorded as a sub-program from a value standing for the keys that leave the window.
  template <class FeatureMap>
  Value lolcats_hybrid(Value q, Value k, Value v, Value phi_q, FeatureMap phi_k, const std::string& window_factors,
                       std::int64_t window, std::int64_t features) {
    auto outer = std::move(ops_);
    ops_ = nlohmann::json::array();
    const Value keys = ++last_;
    const Value mapped = phi_k(keys);
    const nlohmann::json feature_map = {{"input", keys}, {"output", mapped}, {"ops", ops_}};
    ops_ = std::move(outer);
    return op("lolcats_hybrid", {q, k, v, phi_q},
              {{"phi_k", feature_map}, {"window_factors", window_factors}, {"window", window}, {"features", features}});
  }

  void capture(names::MixerCapture, Value) {}  // captures are LibTorch's (verify, attention transfer)
  Value project_output(Value v) { return unary("project_output", v); }

 private:
  static nlohmann::json to_json(const Recurrence& r);
  Heads<Value> projection(const char* name, Value x);
  Value unary(const char* name, Value v) { return op(name, {v}); }
  Value op(const char* name, const std::vector<Value>& in, const nlohmann::json& attributes = nlohmann::json::object());

  const ModelConfig& config_;
  const RecipeParams& params_;
  nlohmann::json ops_ = nlohmann::json::array();
  Value last_ = kInput;
};

}  // namespace linearize::recipes
