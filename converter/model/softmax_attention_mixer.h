// The source models' token mixer: grouped-query softmax attention with RoPE, optional q/k/v/o biases,
// an optional sliding window and optional attention sinks (gpt-oss), with a KV cache for decode (trimmed to the
// window on sliding layers).
#pragma once

#include <optional>

#include "converter/architectures/architecture.h"
#include "converter/model/linear_adapter.h"
#include "converter/model/token_mixer.h"
#include "kernels/rope.h"

namespace linearize {

struct AttentionProjections {
  at::Tensor q, k, v, o;                    // [out, in] weights
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // undefined when absent
  at::Tensor q_norm, k_norm;  // RMSNorm weights: [head_dim] per head (Qwen3, Gemma 3), [heads x head_dim] (OLMo 2), or undefined
  at::Tensor sinks;           // [heads] logits joining each softmax's denominator (gpt-oss), or undefined
};

// q, k, v of one projection call in fla's sequence-first layout: [B, T, H, D], [B, T, Hkv, D] x 2 (q and k
// after the family's q/k norm, before RoPE).
struct ProjectedHeads {
  at::Tensor q, k, v;
};

struct SoftmaxAttentionShape {
  std::int64_t heads = 0, kv_heads = 0, head_dim = 0;
  std::int64_t max_position_embeddings = 0;  // dynamic RoPE rescales past it
  std::optional<std::int64_t> window;        // Mistral / Qwen2 sliding layers
  double scale = 0;                          // of q.k; 0: head_dim^-1/2 (Gemma: query_pre_attn_scalar^-1/2)
  NormStyle qk_norm_style = NormStyle::Weight;
  double qk_norm_eps = 1e-6;
  QkNorm qk_norm = QkNorm::None;  // per head, or over all heads of q (and of k) at once

  double effective_scale() const;
};

class SoftmaxAttentionMixer final : public TokenMixer {
 public:
  // `adapters`: the layer's (shared, so adapters attached after loading act here too); null for none.
  SoftmaxAttentionMixer(AttentionProjections proj, SoftmaxAttentionShape shape, RopeConfig rope,
                        std::shared_ptr<const LayerAdapters> adapters = nullptr);

  at::Tensor forward(const at::Tensor& x, std::int64_t start, MixerState* state, const MixerCall& call) const override;
  std::unique_ptr<MixerState> new_state() const override;
  std::string kind() const override { return shape_.window ? "softmax-window" : "softmax"; }
  // softmax(q_i.k_j / sqrt(d)) over the visible keys (causal, and the window on sliding layers; a sink's share
  // left out, so its rows sum to less than 1): the teacher's weights in Hedgehog's attention distillation.
  at::Tensor attention_weights(const at::Tensor& x) const override;
  const SoftmaxAttentionMixer& source_attention() const override { return *this; }
  // This mixer with no adapters, sharing every tensor (the teacher of a LoRA-trained student).
  SoftmaxAttentionMixer without_adapters() const;

  // One GEMM for q, k and v together (their weights are stored as one [q+k+v, hidden] matrix; the
  // separate q/k/v of projections() are views of it), split into heads; not rotated. Adapters on
  // q/k/v_proj add their deltas.
  ProjectedHeads project_heads(const at::Tensor& x) const;
  // q, k, v through the weights alone (adapters included): no biases, no q/k norm. The layouts a recipe becomes
  // exactly (Qwen3.5's Gated DeltaNet, docs/recipes.md#gated-deltanet) have neither.
  ProjectedHeads project_weights(const at::Tensor& x) const;
  // [B, T, H, D] -> o_proj (and its adapter) -> [B, T, hidden]
  at::Tensor project_output(const at::Tensor& heads) const;

  const AttentionProjections& projections() const { return proj_; }
  const SoftmaxAttentionShape& shape() const { return shape_; }
  const RopeConfig& rope() const { return rope_; }
  // RoPE cos/sin for positions start .. start+length-1 in like's dtype and device (dynamic RoPE included):
  // [T, rotary_dim]; for a padded call's per-row positions [B, T], [B, 1, T, rotary_dim] (heads first).
  kernels::RopeCosSin cos_sin(std::int64_t start, std::int64_t length, const at::Tensor& like) const;
  kernels::RopeCosSin cos_sin(const at::Tensor& positions, const at::Tensor& like) const;
  // A call's: its per-row positions where it has them (MixerCall::positions), else start..
  kernels::RopeCosSin cos_sin(const MixerCall& call, std::int64_t start, const at::Tensor& like) const;

 private:
  // cos/sin at `positions` ([T] or [B, T]), seq_len the longest sequence they imply (for dynamic RoPE).
  kernels::RopeCosSin cos_sin(const at::Tensor& positions, std::int64_t seq_len, const at::Tensor& like) const;
  // q, k (RoPE'd with cs) and v of x, heads first: [B, H, T, D], [B, Hkv, T, D] x 2.
  ProjectedHeads rotated_heads(const at::Tensor& x, const kernels::RopeCosSin& cs) const;
  // The fused q/k/v GEMM (+ bias when given), adapters added, split into heads.
  ProjectedHeads split_projection(const at::Tensor& x, const at::Tensor& bias) const;

  AttentionProjections proj_;
  at::Tensor qkv_, qkv_bias_;  // fused; proj_.q/k/v (and biases) are row slices of these
  SoftmaxAttentionShape shape_;
  RopeConfig rope_;
  std::shared_ptr<const LayerAdapters> adapters_;
  kernels::RopeFrequencies freqs_;  // at max_position_embeddings (dynamic RoPE recomputes beyond it)
};

}  // namespace linearize
