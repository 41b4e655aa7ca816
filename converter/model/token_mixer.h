// The token mixer of a decoder block: softmax attention for source models, a recipe's linear or hybrid
// mixer for converted ones. The decoder never knows which (docs/architecture.md#one-model-pluggable-token-mixers).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "kernels/linear_attention.h"

namespace linearize {

class SoftmaxAttentionMixer;

// Names an intermediate and hands it over (llama.cpp's cb(cur, name, il)); verify and attention transfer
// both listen here. Names: layers.{i}.attn_in, layers.{i}.attn_out, layers.{i}.mlp_out, layers.{i}.out,
// embed, norm, logits; mixers add their own under layers.{i}.mixer.*.
using CaptureFn = std::function<void(const std::string& name, const at::Tensor& value)>;

// What a mixer carries between calls when decoding: a KV cache, a recurrent state, or both.
struct MixerState {
  virtual ~MixerState() = default;
  virtual std::int64_t bytes() const = 0;  // memory held, for generate's report and the constant-memory checks
};

// How one call runs: where its intermediates go, under which name, and which form a linear mixer uses
// (chunked for prefill and training, parallel as the oracle verify compares against; one-token calls
// with a state always run the recurrent form).
struct MixerCall {
  const CaptureFn& capture;
  std::string scope;  // "layers.{i}.mixer"
  kernels::MixerForm form = kernels::MixerForm::chunked;
  // A left-padded batch (a stateless call only; docs/architecture.md#padded-batches): token_mask [B, T] bool,
  // false on padding, and positions [B, T] int64, each row's own (its first token at 0). A padded token is a
  // no-op for every real one: no query sees it, and it writes nothing into a state.
  // Undefined: no padding, positions start.. for every row.
  at::Tensor token_mask{}, positions{};
};

class TokenMixer {
 public:
  virtual ~TokenMixer() = default;
  // x: [B, T, hidden] (already normed) at absolute positions start .. start+T-1. With a state, the call
  // continues from it and advances it (prefill, then T = 1 per decode step); without, it is a stateless
  // forward over the whole sequence (training, verify). Returns [B, T, hidden].
  virtual at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const = 0;
  virtual std::unique_ptr<MixerState> new_state() const = 0;
  virtual std::string kind() const = 0;  // "softmax", "softmax-window", a recipe's mixer name

  // The tensors a converted mixer adds, by their NewTensor names ("feature_map_q.weight"), as handles
  // sharing the mixer's own: requires_grad_() or set_data() on them acts on the mixer. Empty for the
  // softmax mixer and for recipes without new tensors.
  virtual std::vector<std::pair<std::string, at::Tensor>> trainable() const { return {}; }

  // The mixer as attention weights, for a stateless forward of x [B, T, hidden] from position 0:
  // [B, H, T, T] (fp32 or wider) with forward(x)_i = W_O sum_j a_ij v_j (v per query head) and each
  // row a distribution over the keys j <= i. Hedgehog's attention distillation compares these
  // (docs/recipes.md#hedgehog). Defined by the programs whose output is such a mix (hedgehog, lolcats and
  // the softmax mixer); undefined for the others (gated states, or no normaliser: liger-gla, supra,
  // gated-deltanet, mamba2, transnormer). O(T^2) memory per head: for training-length sequences only.
  virtual at::Tensor attention_weights(const at::Tensor& /*x*/) const { return {}; }

  // The source layer's softmax attention this mixer was made from (itself for a softmax mixer): its
  // projections are the ones this mixer calls. CausalLM::source_model rebuilds the source from these.
  virtual const SoftmaxAttentionMixer& source_attention() const = 0;
};

}  // namespace linearize
