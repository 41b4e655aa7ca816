// Pieces every linearized mixer shares (the projections are the source attention's project_heads and
// project_output): RoPE in fla's [B, T, H, D] layout, and the decode state (a linear-attention state
// plus the window KV cache of the hybrids).
#pragma once

#include <cstdint>

#include "converter/model/softmax_attention_mixer.h"
#include "converter/recipes/recipe.h"
#include "kernels/linear_attention.h"

namespace linearize::recipes {

// RoPE on [B, T, H, D] at positions start.. (the source model's own RoPE).
at::Tensor rope_bthd(const at::Tensor& x, const kernels::RopeCosSin& cs);

// Repeats kv heads to query heads ([B, T, Hkv, D] -> [B, T, H, D]) for recipes whose maps or decays
// are per query head.
at::Tensor repeat_heads(const at::Tensor& x, std::int64_t heads);

// a_i.b_j for every pair of positions, per head: [B, T, H, F] x [B, S, H, F] -> [B, H, T, S] (the
// quadratic form of a feature-map attention, for TokenMixer::attention_weights).
at::Tensor pairwise(const at::Tensor& a, const at::Tensor& b);

// The last keys and values a window hybrid needs in decode ([B, n, Hkv, D], rotated keys) and the
// position of the first one. Holds exactly `window` keys once `window` tokens have been seen.
struct WindowKv {
  at::Tensor k, v;
  std::int64_t start = 0;
};

// The keys (and values) a window hybrid's call sees: the cached ones, then this call's, with the
// position of the first; and the cache update that keeps the last `window` of them.
WindowKv window_keys(const WindowKv* cache, const at::Tensor& k, const at::Tensor& v, std::int64_t start);
WindowKv last_keys(const WindowKv& keys, std::int64_t window);

struct LinearMixerState final : MixerState {
  kernels::LinearState linear;
  WindowKv window;
  std::int64_t bytes() const override;
};

// Hedgehog feature maps of LoLCATs and Hedgehog: feature_map_q.weight and feature_map_k.weight, [H, d, f]
// per query head, truncated-identity init (LoLCATs --lk_zero_init); f = params.feature_dim or d / 2.
std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx);

// The form a call runs: recurrent for one token with a state, else the call's form.
kernels::MixerForm form_for(const MixerCall& call, std::int64_t tokens, const MixerState* state);

}  // namespace linearize::recipes
