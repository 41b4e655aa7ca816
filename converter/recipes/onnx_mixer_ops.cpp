#include "converter/recipes/onnx_mixer_ops.h"

#include <limits>

namespace linearize::recipes {

Heads<std::string> OnnxMixerOps::project_heads(const std::string& x) {
  auto h = layer_.project_heads(x);
  return {std::move(h.q), std::move(h.k), std::move(h.v)};
}

Heads<std::string> OnnxMixerOps::project_weights(const std::string& x) {
  auto h = layer_.project_weights(x);
  return {std::move(h.q), std::move(h.k), std::move(h.v)};
}

std::string OnnxMixerOps::linear(const std::string& v, const std::string& weight, const std::string& bias) {
  return o_.linear(v, layer_.recipe_tensor(weight), bias.empty() ? std::string() : layer_.recipe_tensor(bias));
}

std::string OnnxMixerOps::per_head(const std::string& x, const std::string& weight, const std::string& bias) {
  return layer_.per_head(x, layer_.recipe_tensor(weight), bias.empty() ? std::string() : layer_.recipe_tensor(bias));
}

std::string OnnxMixerOps::l2_normalize(const std::string& v, double eps) {
  return o_.div(v, o_.op("Sqrt", {o_.add(o_.reduce_sum(o_.mul(v, v), -1), o_.f32(static_cast<float>(eps)))}));
}

std::string OnnxMixerOps::layer_normalize(const std::string& v, double eps) {
  const auto centred = o_.sub(v, o_.reduce_mean(v, -1));
  return o_.div(centred, o_.op("Sqrt", {o_.add(o_.reduce_mean(o_.mul(centred, centred), -1), o_.f32(static_cast<float>(eps)))}));
}

OnnxLinearAttentionOptions OnnxMixerOps::options(const Recurrence& r) const {
  auto options = layer_.linear_attention_options();
  options.kv_heads = r.state_heads;
  options.groups = r.groups;
  options.key_dim = r.key_dim;
  options.value_dim = r.value_dim;
  options.scale = r.scale;
  options.decay_per_channel = r.decay == Decay::per_channel;
  return options;
}

std::string OnnxMixerOps::linear_attention(const std::string& q, const std::string& k, const std::string& v,
                                           const std::string& decay, const Recurrence& r) {
  const auto mask = layer_.token_mask();
  // A padded token writes nothing (k = 0, and its keys' sum with it) and keeps the state (log decay x 0).
  std::optional<std::string> log_decay;
  if (r.decay == Decay::fixed) {
    std::vector<float> values(r.fixed_log_decay.begin(), r.fixed_log_decay.end());
    const auto fixed = o_.model().constant(o_.graph().fresh_name("fixed_log_decay"), values,
                                           {1, static_cast<std::int64_t>(values.size()), 1, 1});
    log_decay = o_.mul(mask, fixed);
  } else if (r.decay != Decay::none) {
    log_decay = o_.mul(decay, mask);
  }
  const auto state = layer_.state("recurrent", state_shape(r));
  std::optional<std::string> normalizer;
  if (r.normalize) normalizer = layer_.state("normalizer", {"batch", r.state_heads, r.key_dim});
  const auto out = onnx_linear_attention(o_, q, o_.mul(k, mask), v, log_decay, state, normalizer, options(r));
  layer_.set_state("recurrent", out.state, state_shape(r));
  if (r.normalize) layer_.set_state("normalizer", out.normalizer, {"batch", r.state_heads, r.key_dim});
  return out.o;
}

std::string OnnxMixerOps::delta_rule(const std::string& q, const std::string& k, const std::string& v,
                                     const std::string& beta, const std::string& decay, const Recurrence& r) {
  const auto mask = layer_.token_mask();
  // A padded token changes nothing: beta = 0 writes nothing, log decay 0 keeps the state.
  const auto state = layer_.state("recurrent", state_shape(r));
  const auto out = onnx_delta_rule(o_, q, k, v, o_.mul(beta, mask), o_.mul(decay, mask), state, options(r));
  layer_.set_state("recurrent", out.state, state_shape(r));
  return out.o;
}

std::vector<std::string> OnnxMixerOps::short_conv(const std::vector<HeadsOf<std::string>>& heads, const std::string& weight,
                                                  const std::string& bias) {
  const auto D = head_dim();
  std::vector<std::string> flat;
  std::int64_t channels = 0;
  for (const auto& h : heads) {
    flat.push_back(o_.tokens_first(h.heads));
    channels += h.count * D;
  }
  const std::int64_t K = layer_.recipe_tensor_shape(weight).at(1);  // the weight is [channels, K]
  // The last K-1 inputs carried, a depthwise Conv over them and the call's (a padded token's inputs zeroed, as
  // the zeros before a first token), then SiLU.
  const auto conv_state = layer_.state("conv", {"batch", K - 1, channels});
  const auto inputs = o_.concat({conv_state, o_.mul(o_.concat(flat, -1), o_.squeeze(layer_.token_mask(), {1}))}, 1);
  std::vector<std::string> conv_inputs{o_.transpose(inputs, {0, 2, 1}), o_.reshape(layer_.recipe_tensor(weight), {channels, 1, K})};
  if (!bias.empty()) conv_inputs.push_back(layer_.recipe_tensor(bias));
  const auto conv = o_.op("Conv", conv_inputs, {{"group", channels}});
  const auto y = silu(o_.transpose(conv, {0, 2, 1}));  // [B, S, channels]
  layer_.set_state("conv", o_.slice(inputs, 1, o_.sub(o_.dim(inputs, 1), o_.i64({K - 1})), o_.i64({std::numeric_limits<std::int64_t>::max()})),
                   {"batch", K - 1, channels});
  std::vector<std::string> out;
  std::int64_t offset = 0;
  for (const auto& h : heads) {
    out.push_back(split_heads(o_.slice(y, -1, offset, offset + h.count * D), D));
    offset += h.count * D;
  }
  return out;
}

std::string OnnxMixerOps::liger_hybrid(const LigerParts<std::string>& p, std::int64_t window) {
  // GLA on the maps (the state per kv head, [B, Hkv, D, D]: softmax_d keeps the head width), then the window
  // branch, mixed 0.5 / 0.5 each with its own normaliser.
  Recurrence r{kv_heads(), head_dim(), head_dim(), heads() / kv_heads()};
  r.decay = Decay::per_channel;
  const auto lin = linear_attention(p.phi_q, p.phi_k, p.v, p.log_decay, r);
  const auto w = layer_.window_branch(p.q, p.k, p.v, window);
  const auto half = o_.f32(0.5f);
  return o_.add(o_.mul(o_.div(w.numerator, w.denominator), half), o_.mul(lin, half));
}

// The linear part in its masked quadratic form over the call (cache + new keys): query i reads the state and
// every key with cached + i - j >= window; the keys that leave the window in this call enter the state.
std::string OnnxMixerOps::lolcats_mix(const OnnxLayer::WindowBranch& w, const std::string& phi_q, const std::string& phi_k,
                                      const std::string& window_factors, std::int64_t window, std::int64_t F) {
  const std::int64_t H = heads(), D = head_dim();
  const auto per_head_values = layer_.repeat_kv(w.values);
  // [v, 1]: the ones column's sums are the normaliser's linear part (the state's last column).
  const auto ones_shape = o_.concat({o_.op("Shape", {per_head_values}, {{"end", std::int64_t{3}}}), o_.i64({1})}, 0);
  const auto values_one = o_.concat({per_head_values, o_.op("Expand", {o_.f32(1.0f), ones_shape})}, -1);
  // Keys past the window of query i (padded ones never count): [B, 1, S, T].
  const auto left = o_.op("And", {o_.op("GreaterOrEqual", {w.back, o_.scalar_i64(window)}), w.key_valid});
  const auto scores = o_.op("Where", {left, o_.matmul(phi_q, o_.transpose(phi_k, {0, 1, 3, 2})), o_.f32(0.0f)});
  const auto state = layer_.state("recurrent", {"batch", H, F, D + 1});
  const auto lin = o_.add(o_.matmul(phi_q, state), o_.matmul(scores, values_one));  // [B, H, S, D + 1]
  const auto factor = o_.sigmoid(head_param(window_factors));
  const auto y = o_.div(o_.add(o_.mul(factor, w.numerator), o_.slice(lin, -1, 0, D)),
                        o_.add(o_.mul(factor, w.denominator), o_.slice(lin, -1, D, D + 1)));
  // The keys past the window of the call's last query enter the state: [B, 1, T, 1].
  const auto last_back = o_.slice(w.back, 0, -1, std::numeric_limits<std::int64_t>::max());  // [1, T]
  const auto leaving = o_.op("And", {o_.op("GreaterOrEqual", {last_back, o_.scalar_i64(window)}), w.key_valid});
  const auto entering = o_.transpose(o_.cast(leaving, onnx_model::ElementType::f32), {0, 1, 3, 2});
  const auto written = o_.matmul(o_.transpose(phi_k, {0, 1, 3, 2}), o_.mul(values_one, entering));
  layer_.set_state("recurrent", o_.add(state, written), {"batch", H, F, D + 1});
  return y;
}

}  // namespace linearize::recipes
