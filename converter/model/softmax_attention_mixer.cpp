#include "converter/model/softmax_attention_mixer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "converter/names.h"
#include "kernels/linear.h"
#include "converter/model/rms_norm.h"
#include "kernels/softmax_attention.h"

namespace linearize {
namespace {

// Keys and values seen so far ([B, Hkv, S, D], already rotated), starting at absolute position key_start.
// Full-attention layers append into buffers that grow by doubling, so a decode step copies one token's
// keys, not the whole cache (a torch.cat per step, as transformers' DynamicCache does, is O(context)).
// Sliding layers keep exactly their window - 1 newest keys.
struct KvCache final : MixerState {
  at::Tensor k_buffer, v_buffer;  // capacity >= length along dim 2
  std::int64_t length = 0;
  std::int64_t key_start = 0;

  at::Tensor k() const { return k_buffer.narrow(2, 0, length); }
  at::Tensor v() const { return v_buffer.narrow(2, 0, length); }
  void append(const at::Tensor& k_new, const at::Tensor& v_new) {
    const std::int64_t needed = length + k_new.size(2);
    if (!k_buffer.defined() || k_buffer.size(2) < needed) {
      const std::int64_t capacity = std::max<std::int64_t>(needed, k_buffer.defined() ? 2 * k_buffer.size(2) : 0);
      auto grow = [&](const at::Tensor& old, const at::Tensor& like) {
        auto sizes = like.sizes().vec();
        sizes[2] = capacity;
        auto fresh = at::empty(sizes, like.options());
        if (length > 0) fresh.narrow(2, 0, length).copy_(old.narrow(2, 0, length));
        return fresh;
      };
      k_buffer = grow(k_buffer, k_new);
      v_buffer = grow(v_buffer, v_new);
    }
    k_buffer.narrow(2, length, k_new.size(2)).copy_(k_new);
    v_buffer.narrow(2, length, v_new.size(2)).copy_(v_new);
    length = needed;
  }
  // Keeps the last `keep` keys only (a sliding window), in a buffer of exactly that size.
  void keep_last(std::int64_t keep) {
    k_buffer = k().narrow(2, length - keep, keep).clone();
    v_buffer = v().narrow(2, length - keep, keep).clone();
    key_start += length - keep;
    length = keep;
  }
  std::int64_t bytes() const override {
    return k_buffer.defined() ? static_cast<std::int64_t>(k_buffer.nbytes() + v_buffer.nbytes()) : 0;
  }
};



}  // namespace

SoftmaxAttentionMixer::SoftmaxAttentionMixer(AttentionProjections proj, SoftmaxAttentionShape shape, RopeConfig rope,
                                             std::shared_ptr<const LayerAdapters> adapters)
    : proj_(std::move(proj)), shape_(shape), rope_(std::move(rope)), adapters_(std::move(adapters)),
      freqs_(kernels::rope_frequencies(rope_, shape_.head_dim, shape_.max_position_embeddings)) {
  // Fused once here; q/k/v become views of the fused matrix, so the model holds one copy of them.
  qkv_ = at::cat({proj_.q, proj_.k, proj_.v});
  const auto q_rows = proj_.q.size(0), kv_rows = proj_.k.size(0);
  proj_.q = qkv_.narrow(0, 0, q_rows);
  proj_.k = qkv_.narrow(0, q_rows, kv_rows);
  proj_.v = qkv_.narrow(0, q_rows + kv_rows, kv_rows);
  if (proj_.q_bias.defined() || proj_.k_bias.defined() || proj_.v_bias.defined()) {
    const auto or_zeros = [&](const at::Tensor& b, std::int64_t rows) { return b.defined() ? b : at::zeros({rows}, qkv_.options()); };
    qkv_bias_ = at::cat({or_zeros(proj_.q_bias, q_rows), or_zeros(proj_.k_bias, kv_rows), or_zeros(proj_.v_bias, kv_rows)});
    proj_.q_bias = qkv_bias_.narrow(0, 0, q_rows);
    proj_.k_bias = qkv_bias_.narrow(0, q_rows, kv_rows);
    proj_.v_bias = qkv_bias_.narrow(0, q_rows + kv_rows, kv_rows);
  }
}

SoftmaxAttentionMixer SoftmaxAttentionMixer::without_adapters() const {
  auto copy = *this;
  copy.adapters_ = nullptr;
  return copy;
}

ProjectedHeads SoftmaxAttentionMixer::split_projection(const at::Tensor& x, const at::Tensor& bias) const {
  const auto B = x.size(0), T = x.size(1), D = shape_.head_dim;
  const auto qkv = kernels::linear_projection(x, qkv_, bias);
  const auto q_width = shape_.heads * D, kv_width = shape_.kv_heads * D;
  auto q = qkv.narrow(-1, 0, q_width), k = qkv.narrow(-1, q_width, kv_width), v = qkv.narrow(-1, q_width + kv_width, kv_width);
  if (adapters_) {
    q = adapters_->apply(Projection::q, x, q);
    k = adapters_->apply(Projection::k, x, k);
    v = adapters_->apply(Projection::v, x, v);
  }
  return {q.view({B, T, shape_.heads, D}), k.view({B, T, shape_.kv_heads, D}), v.view({B, T, shape_.kv_heads, D})};
}

ProjectedHeads SoftmaxAttentionMixer::project_heads(const at::Tensor& x) const {
  auto heads = split_projection(x, qkv_bias_);
  if (shape_.qk_norm != QkNorm::None) {
    // OLMo 2 normalises the whole projection ([B, T, H D]), the others each head ([B, T, H, D]).
    const bool full = shape_.qk_norm == QkNorm::FullWidth;
    const auto norm = [&](const at::Tensor& h, const at::Tensor& weight) {
      const auto y = rms_norm(shape_.qk_norm_style, full ? h.flatten(2) : h, weight, shape_.qk_norm_eps);
      return full ? y.view(h.sizes()) : y;
    };
    heads.q = norm(heads.q, proj_.q_norm);
    heads.k = norm(heads.k, proj_.k_norm);
  }
  return heads;
}

ProjectedHeads SoftmaxAttentionMixer::project_weights(const at::Tensor& x) const { return split_projection(x, at::Tensor()); }

double SoftmaxAttentionShape::effective_scale() const { return scale > 0 ? scale : 1.0 / std::sqrt(double(head_dim)); }

at::Tensor SoftmaxAttentionMixer::project_output(const at::Tensor& heads) const {
  const auto flat = heads.reshape({heads.size(0), heads.size(1), -1});
  const auto out = kernels::linear_projection(flat, proj_.o, proj_.o_bias);
  return adapters_ ? adapters_->apply(Projection::o, flat, out) : out;
}

kernels::RopeCosSin SoftmaxAttentionMixer::cos_sin(std::int64_t start, std::int64_t length, const at::Tensor& like) const {
  return cos_sin(at::arange(start, start + length, like.options().dtype(at::kLong)), start + length, like);
}

kernels::RopeCosSin SoftmaxAttentionMixer::cos_sin(const at::Tensor& positions, const at::Tensor& like) const {
  // The longest sequence only matters to length-dependent RoPE: no device sync otherwise.
  const std::int64_t seq_len = kernels::rope_depends_on_length(rope_) ? positions.max().item<std::int64_t>() + 1 : 0;
  auto cs = cos_sin(positions, seq_len, like);
  return {cs.cos.unsqueeze(1), cs.sin.unsqueeze(1)};  // [B, 1, T, rot]: one row per sequence, heads first
}

kernels::RopeCosSin SoftmaxAttentionMixer::cos_sin(const at::Tensor& positions, std::int64_t seq_len, const at::Tensor& like) const {
  // Dynamic NTK and LongRoPE follow transformers' dynamic_rope_update: frequencies for the longest position seen.
  if (kernels::rope_depends_on_length(rope_))
    return kernels::rope_cos_sin(kernels::rope_frequencies(rope_, shape_.head_dim, shape_.max_position_embeddings, seq_len),
                                 positions, like.scalar_type());
  return kernels::rope_cos_sin(freqs_, positions, like.scalar_type());
}

kernels::RopeCosSin SoftmaxAttentionMixer::cos_sin(const MixerCall& call, std::int64_t start, const at::Tensor& like) const {
  return call.positions.defined() ? cos_sin(call.positions.to(like.device()), like) : cos_sin(start, like.size(1), like);
}

ProjectedHeads SoftmaxAttentionMixer::rotated_heads(const at::Tensor& x, const kernels::RopeCosSin& cs) const {
  const auto heads = project_heads(x);  // [B, T, H, D] -> [B, H, T, D] for attention
  return {kernels::apply_rope(heads.q.transpose(1, 2), cs), kernels::apply_rope(heads.k.transpose(1, 2), cs),
          heads.v.transpose(1, 2)};
}

at::Tensor SoftmaxAttentionMixer::forward(const at::Tensor& x, std::int64_t start, MixerState* state,
                                          const MixerCall& call) const {
  TORCH_CHECK(!call.token_mask.defined() || state == nullptr, "softmax attention: a padded batch runs stateless");
  auto [q, k, v] = rotated_heads(x, cos_sin(call, start, x));
  if (call.capture) {
    call.capture(names::capture(call.scope, names::MixerCapture::q), q);
    call.capture(names::capture(call.scope, names::MixerCapture::k), k);
    call.capture(names::capture(call.scope, names::MixerCapture::v), v);
  }

  kernels::SoftmaxAttentionOptions options;
  options.query_start = start;
  options.key_start = start;
  options.window = shape_.window;
  options.scale = shape_.effective_scale();
  options.sinks = proj_.sinks;
  if (call.token_mask.defined()) options.key_valid = call.token_mask;
  auto* cache = static_cast<KvCache*>(state);
  if (cache) {
    if (cache->length == 0) cache->key_start = start;
    cache->append(k, v);
    k = cache->k();
    v = cache->v();
    options.key_start = cache->key_start;
  }
  const auto attended = kernels::softmax_attention(q, k, v, options);
  // A sliding layer's next query (at start+T) sees keys from start+T-window+1 on: keep exactly those.
  if (cache && shape_.window && cache->length > *shape_.window - 1) cache->keep_last(*shape_.window - 1);
  return project_output(attended.transpose(1, 2));
}

at::Tensor SoftmaxAttentionMixer::attention_weights(const at::Tensor& x) const {
  const std::int64_t T = x.size(1);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto heads = rotated_heads(x, cos_sin(0, T, x));
  const auto k = heads.k.to(compute).repeat_interleave(shape_.heads / shape_.kv_heads, 1);
  const auto scores = at::matmul(heads.q.to(compute), k.transpose(-1, -2)) * shape_.effective_scale();
  kernels::SoftmaxAttentionOptions options;
  options.window = shape_.window;
  const auto hidden = kernels::causal_window_mask(T, T, options, x.device()).logical_not();
  const auto masked = scores.masked_fill(hidden, -std::numeric_limits<double>::infinity());
  if (!proj_.sinks.defined()) return at::softmax(masked, -1);
  // The sink's column joins the softmax and leaves the weights (transformers' eager_attention_forward).
  const auto sink = proj_.sinks.to(compute).view({1, -1, 1, 1}).expand({masked.size(0), masked.size(1), T, 1});
  return at::softmax(at::cat({masked, sink}, -1), -1).narrow(-1, 0, T);
}

std::unique_ptr<MixerState> SoftmaxAttentionMixer::new_state() const { return std::make_unique<KvCache>(); }

}  // namespace linearize
