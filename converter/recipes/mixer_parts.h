// Pieces every linearized mixer shares (the projections are the source attention's project_heads and
// project_output): RoPE in fla's [B, T, H, D] layout, and the decode states.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "converter/model/softmax_attention_mixer.h"
#include "converter/names.h"
#include "converter/recipes/recipe.h"
#include "kernels/hybrid_attention.h"
#include "kernels/linear_attention.h"

namespace linearize::recipes {

// t in fp32 when it is narrower (bf16/fp16 models compute maps and gates in fp32), fp64 kept: verify's
// per-layer L1 runs a mixer rebuilt in fp64, where a cast to fp32 would round each form differently.
at::Tensor at_least_fp32(const at::Tensor& t);

// RoPE on [B, T, H, D] at positions start.. (the source model's own RoPE).
at::Tensor rope_bthd(const at::Tensor& x, const kernels::RopeCosSin& cs);

// Repeats kv heads to query heads ([B, T, Hkv, D] -> [B, T, H, D]) for recipes whose maps or decays
// are per query head.
at::Tensor repeat_heads(const at::Tensor& x, std::int64_t heads);

// a_i.b_j for every pair of positions, per head: [B, T, H, F] x [B, S, H, F] -> [B, H, T, S] (the
// quadratic form of a feature-map attention, for TokenMixer::attention_weights).
at::Tensor pairwise(const at::Tensor& a, const at::Tensor& b);

struct LinearMixerState final : MixerState {
  kernels::LinearState linear;
  std::int64_t bytes() const override { return linear.empty() ? 0 : linear.bytes(); }
};

// A linear state and a short convolution's last inputs (mamba2).
struct ConvLinearMixerState final : MixerState {
  kernels::LinearState linear;
  at::Tensor conv;  // [B, K-1, channels]
  std::int64_t bytes() const override {
    return (linear.empty() ? 0 : linear.bytes()) + (conv.defined() ? static_cast<std::int64_t>(conv.nbytes()) : 0);
  }
};

// The window hybrids' decode state: the linear state and the window's KV cache.
struct HybridMixerState final : MixerState {
  kernels::HybridState hybrid;
  std::int64_t bytes() const override { return hybrid.bytes(); }
};

// The form a call runs: recurrent for one token with a state, else the call's form.
kernels::MixerForm form_for(const MixerCall& call, std::int64_t tokens, const MixerState* state);

// A window hybrid's call: `kernel` (kernels::liger_attention or lolcats_attention) in the call's form from
// the carried state, or `decode_step` where it applies to a recurrent call (a fused step that advances the
// state in place and returns an undefined tensor where it does not apply, as kernels::liger_decode_step;
// nullptr: none); its output captured as <scope>.y, the state advanced, then the source's o_proj.
template <class Kernel, class DecodeStep, class Inputs>
at::Tensor run_hybrid(Kernel kernel, DecodeStep decode_step, const Inputs& in, std::int64_t window,
                      const SoftmaxAttentionMixer& source, const at::Tensor& x, MixerState* state, const MixerCall& call) {
  auto* st = static_cast<HybridMixerState*>(state);
  kernels::HybridAttentionOptions options;
  options.form = form_for(call, x.size(1), state);
  options.window = window;
  at::Tensor y;
  if constexpr (!std::is_same_v<DecodeStep, std::nullptr_t>) {
    if (st && options.form == kernels::MixerForm::recurrent) y = decode_step(in, st->hybrid, window);
  }
  if (!y.defined()) {
    auto out = kernel(in, st ? st->hybrid : kernels::HybridState{}, options);
    y = std::move(out.o);
    if (st) st->hybrid = std::move(out.state);
  }
  if (call.capture) call.capture(names::capture(call.scope, names::MixerCapture::y), y);
  return source.project_output(y.to(x.scalar_type()));
}

// Recipe::check_source of the window hybrids: their window branch scores q.k / sqrt(head_dim)
// (kernels/hybrid_attention.h), so a family scoring otherwise (Gemma's query_pre_attn_scalar != head_dim)
// is refused rather than converted into a different function.
void require_default_attention_scale(const ModelConfig& config);

// A new tensor of `shape` holding `value` everywhere at conversion (fp32).
NewTensor filled(std::string name, std::vector<std::int64_t> shape, double value);

// Hedgehog feature maps of LoLCATs and Hedgehog: feature_map_q.weight and feature_map_k.weight, [H, d, f]
// per query head, truncated-identity init (LoLCATs --lk_zero_init); f = params.feature_dim or d / 2.
std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx);
std::int64_t hedgehog_feature_dim(const ModelConfig& config, const RecipeParams& params);  // f

}  // namespace linearize::recipes
