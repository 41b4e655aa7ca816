// The arguments mixer programs hand the backends' primitives (converter/recipes/mixer_program.h), the same
// types for every backend: a Value is at::Tensor in TorchMixerOps and a value name in OnnxMixerOps.
#pragma once

#include <cstdint>
#include <vector>

namespace linearize::recipes {

// The source attention's heads of x: q [.., H, .., D], k and v [.., Hkv, .., D].
template <class Value>
struct Heads {
  Value q, k, v;
};

// A heads value and its head count (the ONNX backend's values carry no shapes).
template <class Value>
struct HeadsOf {
  Value heads;
  std::int64_t count = 0;
};

// How a linear recurrence's decay is given (docs/recipes.md#three-forms): none (plain linear attention),
// one log decay per head and token ([.., H, .., 1], simple GLA / SSD), one per key channel ([.., H, .., K],
// GLA), or a fixed log decay per head (`fixed`, RetNet / SUPRA's gamma_h).
enum class Decay { none, per_head, per_channel, fixed };

// The shape and options of a recurrence's state [B, state_heads, key_dim, value_dim]: query head h reads state
// head h / groups; o = scale q^T S (normalize: divided by scale q.z + eps, z the keys' running sum).
struct Recurrence {
  Recurrence(std::int64_t heads, std::int64_t keys, std::int64_t values, std::int64_t query_groups = 1)
      : state_heads(heads), key_dim(keys), value_dim(values), groups(query_groups) {}
  std::int64_t state_heads, key_dim, value_dim, groups;
  double scale = 1.0;
  bool normalize = false;
  Decay decay = Decay::none;
  std::vector<double> fixed_log_decay;  // Decay::fixed: one value <= 0 per state head
};

// Liger's hybrid: the window branch on RoPE'd q, k and v, GLA on the feature maps with a per-channel log gate.
template <class Value>
struct LigerParts {
  Value q, k, v, phi_q, phi_k, log_decay;
};

}  // namespace linearize::recipes
