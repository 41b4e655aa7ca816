// The LibTorch backend of the mixer programs (converter/recipes/mixer_program.h): values are at::Tensor in
// fla's sequence-first layout ([B, T, H, D]; one value per head and token is [B, T, H, 1]), the recurrences are
// kernels/' forms (chunked for prefill and training, parallel as verify's oracle, recurrent for a one-token
// call with a state, the fused CPU decode steps where they apply), and a decode state is consumed and written
// over in place where nothing else holds it. ProgramMixer is the TokenMixer every program becomes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "converter/model/softmax_attention_mixer.h"
#include "converter/names.h"
#include "converter/recipes/program_types.h"
#include "converter/recipes/recipe.h"
#include "kernels/hybrid_attention.h"
#include "kernels/linear_attention.h"

namespace linearize::recipes {

// t in fp32 when it is narrower (bf16/fp16 models compute maps and gates in fp32), fp64 kept: verify's
// per-layer L1 runs a mixer rebuilt in fp64, where a cast to fp32 would round each form differently.
at::Tensor at_least_fp32(const at::Tensor& t);

// Kv heads to query heads ([B, T, Hkv, D] -> [B, T, H, D]): query head h reads kv head h / (H / Hkv).
at::Tensor repeat_heads(const at::Tensor& x, std::int64_t heads);

// a_i.b_j for every pair of positions, per head: [B, T, H, F] x [B, S, H, F] -> [B, H, T, S] (the
// quadratic form of a feature-map attention, for TokenMixer::attention_weights).
at::Tensor pairwise(const at::Tensor& a, const at::Tensor& b);

// Every program's decode state: its recurrence's, its short convolution's last inputs, its window hybrid's
// (the linear state and the window's KV cache). A program uses the parts its primitives carry.
struct RecipeMixerState final : MixerState {
  kernels::LinearState linear;
  at::Tensor conv;  // [B, K-1, channels]
  kernels::HybridState hybrid;
  std::int64_t bytes() const override;
};

// What a converted layer's mixer holds: the source attention (whose projections it calls), the recipe's
// tensors of this layer and its resolved parameters.
class ProgramLayer {
 public:
  // `order`: the tensors' names as the recipe declares them (trainable() keeps that order).
  ProgramLayer(const SoftmaxAttentionMixer& source, LayerTensors tensors, std::vector<std::string> order, RecipeParams params);
  const SoftmaxAttentionMixer& source() const { return source_; }
  const at::Tensor& tensor(const std::string& name) const { return tensors_.at(name); }
  const RecipeParams& params() const { return params_; }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const;
  // A fixed per-head tensor (fp32, on the weights' device), made on first use and kept: a decode step does not
  // copy it to the device again.
  const at::Tensor& constant(const std::vector<double>& values) const;

 private:
  struct Constants {
    std::mutex mutex;
    std::map<std::vector<double>, at::Tensor> values;
  };
  SoftmaxAttentionMixer source_;
  LayerTensors tensors_;
  std::vector<std::string> order_;
  RecipeParams params_;
  std::shared_ptr<Constants> constants_ = std::make_shared<Constants>();
};

class TorchMixerOps {
 public:
  using Value = at::Tensor;

  // One call of the layer's mixer on x at positions start.. from `state` (null: stateless), capturing into
  // `call` (null: nothing captured, the chunked form).
  TorchMixerOps(const ProgramLayer& layer, const at::Tensor& x, std::int64_t start, RecipeMixerState* state,
                const MixerCall* call);

  const RecipeParams& params() const { return layer_.params(); }
  double number(const std::string& key) const { return params().at(key).get<double>(); }
  std::int64_t integer(const std::string& key) const { return params().at(key).get<std::int64_t>(); }
  std::int64_t heads() const { return source().shape().heads; }
  std::int64_t kv_heads() const { return source().shape().kv_heads; }
  std::int64_t head_dim() const { return source().shape().head_dim; }
  double attention_scale() const { return source().shape().effective_scale(); }  // the source's, of q.k

  Heads<Value> project_heads(const Value& x) const;
  Heads<Value> project_weights(const Value& x) const;
  Value rope(const Value& heads);
  Value repeat_kv(const Value& heads) const { return repeat_heads(heads, this->heads()); }
  static Value fp32(const Value& v) { return at_least_fp32(v); }
  static Value merge_heads(const Value& heads) { return heads.reshape({heads.size(0), heads.size(1), -1}); }
  static Value split_heads(const Value& v, std::int64_t dim) { return v.view({v.size(0), v.size(1), -1, dim}); }

  // Recipe tensors, cast to the dtype of the value they act on (bf16 models load them in bf16).
  Value linear(const Value& v, const std::string& weight, const std::string& bias = "") const;
  Value per_head(const Value& x, const std::string& weight, const std::string& bias) const;  // [B, T, H, 1]
  Value param(const std::string& name) const;       // as stored, in the call's compute dtype
  Value head_param(const std::string& name) const;  // [1, 1, H, 1] in the call's compute dtype
  Value hedgehog(const Value& heads, const std::string& weight) const;

  static Value softmax_d(const Value& v);
  static Value silu(const Value& v) { return at::silu(v); }
  static Value sigmoid(const Value& v) { return at::sigmoid(v); }
  static Value softplus(const Value& v) { return at::softplus(v); }
  static Value log_sigmoid(const Value& v) { return at::log_sigmoid(v); }
  static Value relu(const Value& v) { return at::relu(v); }
  static Value exp(const Value& v) { return at::exp(v); }
  static Value neg(const Value& v) { return -v; }
  static Value add(const Value& a, const Value& b) { return a + b; }
  static Value mul(const Value& a, const Value& b) { return a * b; }
  static Value div(const Value& a, double b) { return a / b; }
  static Value l2_normalize(const Value& v, double eps);     // v / sqrt(sum v^2 + eps)
  static Value rms_normalize(const Value& v, double eps);    // v / sqrt(mean v^2 + eps)
  static Value layer_normalize(const Value& v, double eps);  // (v - mean) / sqrt(var + eps), no affine

  Value linear_attention(const Value& q, const Value& k, const Value& v, const Value& decay, const Recurrence& r);
  // Gated DeltaNet's rule: beta and the log decay one value per head and token ([B, T, Hkv, 1]).
  Value delta_rule(const Value& q, const Value& k, const Value& v, const Value& beta, const Value& decay, const Recurrence& r);
  // One causal depthwise conv (+ SiLU) over the channels of `heads` concatenated per token, in fp32 at least;
  // returns them split back into heads of the same counts.
  std::vector<Value> short_conv(const std::vector<HeadsOf<Value>>& heads, const std::string& weight, const std::string& bias);
  Value liger_hybrid(const LigerParts<Value>& in, std::int64_t window);
  // phi_k maps the keys leaving the window (as the cache holds them) to their features, features wide (F).
  template <class FeatureMap>
  Value lolcats_hybrid(const Value& q, const Value& k, const Value& v, const Value& phi_q, FeatureMap phi_k,
                       const std::string& window_factors, std::int64_t window, std::int64_t /*features*/) {
    const kernels::LolcatsAttentionInputs in{q, k, v, phi_q, std::function<at::Tensor(const at::Tensor&)>(phi_k),
                                             layer_.tensor(window_factors)};
    return hybrid(kernels::lolcats_attention, kernels::lolcats_decode_step, in, window);
  }

  void capture(names::MixerCapture what, const Value& v) const;
  Value project_output(const Value& heads) const;  // heads in x's dtype, then the source's o_proj

 private:
  const SoftmaxAttentionMixer& source() const { return layer_.source(); }
  kernels::MixerForm form() const;
  // The call's token mask (MixerCall::token_mask), undefined when it has none.
  at::Tensor token_mask() const { return call_ ? call_->token_mask : at::Tensor(); }
  // v [B, T, ...] with the padded tokens' rows 0 (v itself without padding). What a recurrence writes goes
  // through it; decays need not (left padding comes before every token, while a state is still zero).
  at::Tensor zero_padded(const at::Tensor& v) const;
  // A window hybrid's call: the fused decode step where it applies (it returns an undefined tensor where it
  // does not), else `kernel` in the call's form from the carried state.
  template <class Kernel, class DecodeStep, class Inputs>
  Value hybrid(Kernel kernel, DecodeStep decode_step, const Inputs& in, std::int64_t window) {
    kernels::HybridAttentionOptions options;
    options.form = form();
    options.window = window;
    options.scale = source().shape().effective_scale();
    options.key_valid = token_mask();
    at::Tensor y;
    if (state_ && options.form == kernels::MixerForm::recurrent) y = decode_step(in, state_->hybrid, window, options.scale);
    if (!y.defined()) {
      auto out = kernel(in, state_ ? state_->hybrid : kernels::HybridState{}, options);
      y = std::move(out.o);
      if (state_) state_->hybrid = std::move(out.state);
    }
    return y;
  }

  const ProgramLayer& layer_;
  const at::Tensor& x_;
  std::int64_t start_;
  RecipeMixerState* state_;
  const MixerCall* call_;
  at::ScalarType compute_;
  std::optional<kernels::RopeCosSin> cos_sin_;
};

// The TokenMixer of a program: forward runs Program::run on TorchMixerOps; attention_weights runs
// Program::attention_weights where the program has one (hedgehog, lolcats).
template <class Program, class = void>
struct HasAttentionWeights : std::false_type {};
template <class Program>
struct HasAttentionWeights<Program, std::void_t<decltype(&Program::attention_weights)>> : std::true_type {};

template <class Program>
class ProgramMixer final : public TokenMixer {
 public:
  explicit ProgramMixer(ProgramLayer layer) : layer_(std::move(layer)) {}

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override {
    TorchMixerOps o(layer_, x, start, static_cast<RecipeMixerState*>(state), &call);
    return Program::run(o, x);
  }
  at::Tensor attention_weights(const at::Tensor& x) const override {
    if constexpr (HasAttentionWeights<Program>::value) {
      TorchMixerOps o(layer_, x, 0, nullptr, nullptr);
      return Program::attention_weights(o, x);
    } else {
      return {};
    }
  }
  std::unique_ptr<MixerState> new_state() const override { return std::make_unique<RecipeMixerState>(); }
  std::string kind() const override { return Program::kind; }
  const SoftmaxAttentionMixer& source_attention() const override { return layer_.source(); }
  std::vector<std::pair<std::string, at::Tensor>> trainable() const override { return layer_.trainable(); }

 private:
  ProgramLayer layer_;
};

}  // namespace linearize::recipes
