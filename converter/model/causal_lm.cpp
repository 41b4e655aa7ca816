#include "converter/model/causal_lm.h"

#include "converter/model/softmax_attention_mixer.h"
#include "converter/model/weights.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "kernels/norms.h"

namespace linearize {
namespace {

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

}  // namespace

GatedMlp::GatedMlp(const at::Tensor& gate, const at::Tensor& up, at::Tensor down, const at::Tensor& gate_bias,
                   const at::Tensor& up_bias, at::Tensor down_bias, MlpActivation activation,
                   std::shared_ptr<const LayerAdapters> adapters)
    : gate_up_(at::cat({gate, up})), down_(std::move(down)), down_bias_(std::move(down_bias)), activation_(activation),
      adapters_(std::move(adapters)) {
  if (gate_bias.defined() || up_bias.defined())
    gate_up_bias_ = at::cat({gate_bias.defined() ? gate_bias : at::zeros_like(up_bias),
                             up_bias.defined() ? up_bias : at::zeros_like(gate_bias)});
}

at::Tensor GatedMlp::act(const at::Tensor& gate) const {
  return activation_ == MlpActivation::GeluTanh ? at::gelu(gate, "tanh") : at::silu(gate);
}

at::Tensor GatedMlp::forward(const at::Tensor& x) const {
  const auto gate_up = linear(x, gate_up_, gate_up_bias_).chunk(2, -1);
  if (!adapters_) return linear(act(gate_up[0]) * gate_up[1], down_, down_bias_);
  const auto hidden = act(adapters_->apply(Projection::gate, x, gate_up[0])) * adapters_->apply(Projection::up, x, gate_up[1]);
  return adapters_->apply(Projection::down, hidden, linear(hidden, down_, down_bias_));
}

at::Tensor DecoderLayer::weight(Projection projection) const {
  switch (projection) {
    case Projection::q: return attention.q;
    case Projection::k: return attention.k;
    case Projection::v: return attention.v;
    case Projection::o: return attention.o;
    case Projection::gate: return mlp.gate();
    case Projection::up: return mlp.up();
    case Projection::down: return mlp.down();
  }
  return {};
}

at::Tensor DecoderLayer::bias(Projection projection) const {
  switch (projection) {
    case Projection::q: return attention.q_bias;
    case Projection::k: return attention.k_bias;
    case Projection::v: return attention.v_bias;
    case Projection::o: return attention.o_bias;
    case Projection::gate: return mlp.gate_bias();
    case Projection::up: return mlp.up_bias();
    case Projection::down: return mlp.down_bias();
  }
  return {};
}

std::int64_t DecodeState::bytes() const {
  std::int64_t total = 0;
  for (const auto& layer : layers) total += layer->bytes();
  return total;
}

SoftmaxAttentionShape attention_shape(const ModelConfig& config, std::int64_t layer) {
  return {config.num_attention_heads,
          config.num_key_value_heads,
          config.head_dim,
          config.max_position_embeddings,
          config.layer_types[static_cast<std::size_t>(layer)] == AttentionKind::Sliding ? config.sliding_window : std::nullopt,
          config.block.attention_scale.value_or(0.0),
          config.block.norm,
          config.rms_norm_eps};
}

CausalLM CausalLM::load(const std::filesystem::path& dir, const LoadOptions& options, const MixerOverrides* overrides) {
  return load(dir, load_model_config(dir / "config.json"), options, overrides);
}

CausalLM CausalLM::load(const std::filesystem::path& dir, ModelConfig config, const LoadOptions& options,
                        const MixerOverrides* overrides) {
  if (!config.linearize.is_null() && !overrides)
    throw InputError(config.source, "linearize", "is a converted model: load it with load_model(), which builds its mixers");
  CausalLM model;
  model.config_ = std::move(config);
  model.options_ = options;
  const ModelConfig& cfg = model.config_;

  const auto checkpoint = CheckpointWeights::open(dir);
  auto specs = decoder_tensors(*cfg.family, cfg);
  if (overrides) specs.insert(specs.end(), overrides->extra_tensors.begin(), overrides->extra_tensors.end());
  auto w = ModelWeights::load(checkpoint, specs, options.dtype, options.device);
  model.embed_ = w.get("model.embed_tokens.weight");
  model.final_norm_ = w.get("model.norm.weight");
  model.lm_head_ = cfg.tie_word_embeddings ? model.embed_ : w.get("lm_head.weight");
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer layer;
    layer.input_norm = w.get(p + "input_layernorm.weight");
    layer.post_attention_norm = w.get(p + "post_attention_layernorm.weight");
    if (cfg.block.sandwich_norms) {
      layer.pre_feedforward_norm = w.get(p + "pre_feedforward_layernorm.weight");
      layer.post_feedforward_norm = w.get(p + "post_feedforward_layernorm.weight");
    }
    // take(): the mixer and the MLP copy q/k/v and gate/up into fused matrices; get(): kept as they are.
    AttentionProjections proj{w.take(p + "self_attn.q_proj.weight"), w.take(p + "self_attn.k_proj.weight"),
                              w.take(p + "self_attn.v_proj.weight"), w.get(p + "self_attn.o_proj.weight"),
                              w.take(p + "self_attn.q_proj.bias"), w.take(p + "self_attn.k_proj.bias"),
                              w.take(p + "self_attn.v_proj.bias"), w.optional(p + "self_attn.o_proj.bias"),
                              w.optional(p + "self_attn.q_norm.weight"), w.optional(p + "self_attn.k_norm.weight")};
    auto softmax = std::make_unique<SoftmaxAttentionMixer>(std::move(proj), attention_shape(cfg, i), cfg.rope_for(i), layer.adapters);
    layer.attention = softmax->projections();
    if (overrides) layer.mixer = overrides->make(i, *softmax, w);
    if (!layer.mixer) layer.mixer = std::move(softmax);
    layer.mlp = GatedMlp(w.take(p + "mlp.gate_proj.weight"), w.take(p + "mlp.up_proj.weight"),
                         w.get(p + "mlp.down_proj.weight"), w.take(p + "mlp.gate_proj.bias"),
                         w.take(p + "mlp.up_proj.bias"), w.optional(p + "mlp.down_proj.bias"), cfg.block.activation,
                         layer.adapters);
    w.release_taken();
    model.layers_.push_back(std::move(layer));
  }
  return model;
}

at::Tensor CausalLM::run(const at::Tensor& ids, std::int64_t start, DecodeState* state, const CaptureFn& capture,
                         kernels::MixerForm form, bool last_only) const {
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong, "CausalLM: ids must be int64 [B, T]");
  const double eps = config_.rms_norm_eps;
  const auto& block = config_.block;
  const auto norm = [&](const at::Tensor& x, const at::Tensor& weight) {
    return block.norm == NormStyle::OnePlusWeight ? kernels::rms_norm_one_plus(x, weight, eps) : kernels::rms_norm(x, weight, eps);
  };
  auto h = at::embedding(embed_, ids.to(embed_.device()));
  // Gemma scales by sqrt(hidden) rounded to the weights' dtype first, as transformers does.
  if (block.embedding_scale != 1.0) h = h * at::scalar_tensor(block.embedding_scale, embed_.options());
  if (capture) capture("embed", h);
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const auto& layer = layers_[i];
    const std::string scope = "layers." + std::to_string(i);
    const auto normed = norm(h, layer.input_norm);
    // attn_out / mlp_out are the mixer's and the MLP's own outputs (what verify and distill compare);
    // the sandwich's output norms act after them.
    const auto attn = layer.mixer->forward(normed, start, state ? state->layers[i].get() : nullptr,
                                           MixerCall{capture, scope + ".mixer", form});
    h = h + (block.sandwich_norms ? norm(attn, layer.post_attention_norm) : attn);
    const auto mlp = layer.mlp.forward(norm(h, block.sandwich_norms ? layer.pre_feedforward_norm : layer.post_attention_norm));
    h = h + (block.sandwich_norms ? norm(mlp, layer.post_feedforward_norm) : mlp);
    if (capture) {
      capture(scope + ".attn_in", normed);
      capture(scope + ".attn_out", attn);
      capture(scope + ".mlp_out", mlp);
      capture(scope + ".out", h);
    }
  }
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);
  h = norm(h, final_norm_);
  if (capture) capture("norm", h);
  auto logits = at::linear(h, lm_head_);
  if (block.final_logit_softcap) logits = at::tanh(logits / *block.final_logit_softcap) * *block.final_logit_softcap;
  if (capture) capture("logits", logits);
  return logits;
}

at::Tensor CausalLM::forward(const at::Tensor& ids, const CaptureFn& capture, kernels::MixerForm form) const {
  return run(ids, 0, nullptr, capture, form, /*last_only=*/false);
}

DecodeState CausalLM::new_state() const {
  DecodeState state;
  for (const auto& layer : layers_) state.layers.push_back(layer.mixer->new_state());
  return state;
}

at::Tensor CausalLM::prefill(const at::Tensor& ids, DecodeState& state, const CaptureFn& capture) const {
  // Only the last position's logits are needed to continue: project just that row through lm_head.
  const auto logits = run(ids, state.position, &state, capture, kernels::MixerForm::chunked, /*last_only=*/true);
  state.position += ids.size(1);
  return logits.select(1, 0);
}

at::Tensor CausalLM::step(const at::Tensor& ids, DecodeState& state) const {
  return prefill(ids.view({-1, 1}), state);
}

}  // namespace linearize
