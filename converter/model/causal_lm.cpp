#include "converter/model/causal_lm.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <optional>

#include "converter/model/block_program.h"

#include "converter/model/softmax_attention_mixer.h"
#include "converter/names.h"
#include "converter/model/weights.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "kernels/checkpoint.h"
#include "kernels/linear.h"
#include "converter/model/rms_norm.h"

namespace linearize {

GatedMlp::GatedMlp(const at::Tensor& gate, const at::Tensor& up, at::Tensor down, const at::Tensor& gate_bias,
                   const at::Tensor& up_bias, at::Tensor down_bias, GatedActivation activation,
                   std::shared_ptr<const LayerAdapters> adapters)
    : gate_up_(at::cat({gate, up})), down_(std::move(down)), down_bias_(std::move(down_bias)), activation_(activation),
      adapters_(std::move(adapters)) {
  if (gate_bias.defined() || up_bias.defined())
    gate_up_bias_ = at::cat({gate_bias.defined() ? gate_bias : at::zeros_like(up_bias),
                             up_bias.defined() ? up_bias : at::zeros_like(gate_bias)});
}

GatedMlp GatedMlp::without_adapters() const {
  auto copy = *this;
  copy.adapters_ = nullptr;
  return copy;
}

at::Tensor GatedMlp::gated(const at::Tensor& gate, const at::Tensor& up) const {
  switch (activation_.kind) {
    case MlpActivation::Silu: return at::silu(gate) * up;
    case MlpActivation::GeluTanh: return at::gelu(gate, "tanh") * up;
    case MlpActivation::ClampedSwiglu: {
      // GptOssExperts._apply_gate, op by op.
      const auto g = gate.clamp_max(activation_.limit);
      return g * at::sigmoid(g * activation_.alpha) * (up.clamp(-activation_.limit, activation_.limit) + 1);
    }
  }
  return {};
}

at::Tensor GatedMlp::forward(const at::Tensor& x) const {
  const auto gate_up = kernels::linear_projection(x, gate_up_, gate_up_bias_).chunk(2, -1);
  if (!adapters_) return kernels::linear_projection(gated(gate_up[0], gate_up[1]), down_, down_bias_);
  const auto hidden = gated(adapters_->apply(Projection::gate, x, gate_up[0]), adapters_->apply(Projection::up, x, gate_up[1]));
  return adapters_->apply(Projection::down, hidden, kernels::linear_projection(hidden, down_, down_bias_));
}

RoutedMlp::RoutedMlp(at::Tensor router, at::Tensor router_bias, std::vector<GatedMlp> experts, std::int64_t top_k,
                     bool normalize_top_k)
    : router_(std::move(router)), router_bias_(std::move(router_bias)), experts_(std::move(experts)), top_k_(top_k),
      normalize_top_k_(normalize_top_k) {}

RoutedMlp::RoutedMlp(at::Tensor router, at::Tensor router_bias, std::int64_t experts, ExpertLoader load, std::int64_t top_k,
                     bool normalize_top_k)
    : router_(std::move(router)), router_bias_(std::move(router_bias)), experts_(static_cast<std::size_t>(experts)),
      load_(std::move(load)), top_k_(top_k), normalize_top_k_(normalize_top_k) {}

const std::vector<GatedMlp>& RoutedMlp::experts() const {
  TORCH_CHECK(!load_, "RoutedMlp: a streamed layer copies its experts in as tokens pick them");
  return experts_;
}

const GatedMlp& RoutedMlp::expert(std::size_t e) const {
  if (load_ && !experts_[e].down().defined()) experts_[e] = load_(static_cast<std::int64_t>(e));
  return experts_[e];
}

at::Tensor RoutedMlp::forward(const at::Tensor& x) const {
  const auto flat = x.reshape({-1, x.size(-1)});
  const auto probabilities = at::softmax(kernels::linear_projection(flat, router_, router_bias_), -1, at::kFloat);
  auto [weights, chosen] = at::topk(probabilities, top_k_, -1);
  if (normalize_top_k_) weights = weights / weights.sum(-1, /*keepdim=*/true);
  weights = weights.to(x.scalar_type());
  auto out = at::zeros_like(flat);
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    const auto hit = chosen.eq(static_cast<std::int64_t>(e));  // [N, k]: a token picks an expert at most once
    const auto rows = hit.any(-1).nonzero().squeeze(-1);
    if (rows.numel() == 0) continue;
    const auto weight = weights.index_select(0, rows).masked_fill(hit.index_select(0, rows).logical_not(), 0).sum(-1, true);
    out = out.index_add(0, rows, expert(e).forward(flat.index_select(0, rows)) * weight);
  }
  return out.view(x.sizes());
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
  for (const auto& layer : layers)
    if (layer) total += layer->bytes();
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
          config.rms_norm_eps,
          config.block.qk_norm};
}

CausalLM CausalLM::load(const std::filesystem::path& dir, const LoadOptions& options, const MixerOverrides* overrides) {
  return load(dir, load_model_config(dir / "config.json"), options, overrides);
}

namespace {

// Expert e of layer i's routed MLP from its loaded weights (its three projections; gate and up copied into one matrix).
GatedMlp build_expert(names::ExpertNames naming, GatedActivation activation, std::int64_t i, std::int64_t e, ModelWeights& w) {
  using names::ExpertProjection;
  GatedMlp expert(w.take(names::expert_weight(i, e, ExpertProjection::gate, naming)),
                  w.take(names::expert_weight(i, e, ExpertProjection::up, naming)),
                  w.get(names::expert_weight(i, e, ExpertProjection::down, naming)), at::Tensor(), at::Tensor(), at::Tensor(),
                  activation);
  w.release_taken();
  return expert;
}

// One expert of stacked tensors (names::ExpertNames::stacked, gpt-oss) from its slices [e] of the four stacks: gate and
// up are the even and odd columns of gate_up ([hidden, 2 ff], applied as x @ it), transposed to GatedMlp's [out, in].
GatedMlp stacked_expert(const at::Tensor& gate_up, const at::Tensor& gate_up_bias, const at::Tensor& down, const at::Tensor& down_bias,
                        GatedActivation activation) {
  const auto every_other = [](const at::Tensor& t, std::int64_t first) { return t.slice(-1, first, std::nullopt, 2); };
  return GatedMlp(every_other(gate_up, 0).t(), every_other(gate_up, 1).t(), down.t().contiguous(), every_other(gate_up_bias, 0),
                  every_other(gate_up_bias, 1), down_bias.clone(), activation);
}

// The four stacks of layer i, in StackedExperts order.
std::array<std::string, 4> stack_names(std::int64_t i) {
  using names::StackedExperts;
  return {names::stacked_experts(i, StackedExperts::gate_up_proj), names::stacked_experts(i, StackedExperts::gate_up_proj_bias),
          names::stacked_experts(i, StackedExperts::down_proj), names::stacked_experts(i, StackedExperts::down_proj_bias)};
}

// Every expert of layer i from its loaded stacks.
std::vector<GatedMlp> build_stacked_experts(const ModelConfig& cfg, std::int64_t i, ModelWeights& w) {
  std::array<at::Tensor, 4> stacks;
  const auto names = stack_names(i);
  for (std::size_t t = 0; t < names.size(); ++t) stacks[t] = w.take(names[t]);
  std::vector<GatedMlp> experts;
  for (std::int64_t e = 0; e < cfg.moe.experts; ++e)
    experts.push_back(stacked_expert(stacks[0][e], stacks[1][e], stacks[2][e], stacks[3][e], cfg.expert_activation()));
  w.release_taken();
  return experts;
}

// Layer i of a decoder from its loaded weights: norms, the source attention (or the mixer `overrides` makes), the
// dense or routed MLP. The copies into fused matrices release their mapped pages as they go.
// `experts`: a streamed layer's loader of its experts (`w` then holds none of them); empty: every expert from `w`.
DecoderLayer build_layer(const ModelConfig& cfg, std::int64_t i, ModelWeights& w, const MixerOverrides* overrides,
                         const RoutedMlp::ExpertLoader& experts = {}) {
  using names::LayerModule;
  const auto weight = [i](LayerModule m) { return names::weight(i, m); };
  const auto bias = [i](LayerModule m) { return names::bias(i, m); };
  DecoderLayer layer;
  // The norms the placement has (decoder_tensors lists exactly these).
  layer.input_norm = w.optional(weight(LayerModule::input_layernorm));
  layer.post_attention_norm = w.get(weight(LayerModule::post_attention_layernorm));
  layer.pre_feedforward_norm = w.optional(weight(LayerModule::pre_feedforward_layernorm));
  layer.post_feedforward_norm = w.optional(weight(LayerModule::post_feedforward_layernorm));
  // take(): the mixer and the MLP copy q/k/v and gate/up into fused matrices; get(): kept as they are.
  // Phi-3's fused matrices as row views (the mixer and the MLP copy them into their own fused matrices anyway).
  const auto q_rows = cfg.num_attention_heads * cfg.head_dim, kv_rows = cfg.num_key_value_heads * cfg.head_dim;
  const auto qkv = cfg.block.fused_projections ? w.take(weight(LayerModule::qkv_proj)) : at::Tensor();
  const auto gate_up = cfg.block.fused_projections ? w.take(weight(LayerModule::gate_up_proj)) : at::Tensor();
  const auto projection = [&](LayerModule m) {
    if (!qkv.defined()) return w.take(weight(m));
    return m == LayerModule::q_proj ? qkv.narrow(0, 0, q_rows)
           : m == LayerModule::k_proj ? qkv.narrow(0, q_rows, kv_rows)
                                      : qkv.narrow(0, q_rows + kv_rows, kv_rows);
  };
  const auto mlp_projection = [&](LayerModule m) {
    if (!gate_up.defined()) return w.take(weight(m));
    const auto ff = gate_up.size(0) / 2;
    return gate_up.narrow(0, m == LayerModule::gate_proj ? 0 : ff, ff);
  };
  AttentionProjections proj{projection(LayerModule::q_proj), projection(LayerModule::k_proj),
                            projection(LayerModule::v_proj), w.get(weight(LayerModule::o_proj)),
                            w.take(bias(LayerModule::q_proj)), w.take(bias(LayerModule::k_proj)),
                            w.take(bias(LayerModule::v_proj)), w.optional(bias(LayerModule::o_proj)),
                            w.optional(weight(LayerModule::q_norm)), w.optional(weight(LayerModule::k_norm)),
                            w.optional(names::attention_sinks(i))};
  auto softmax = std::make_unique<SoftmaxAttentionMixer>(std::move(proj), attention_shape(cfg, i), cfg.rope_for(i), layer.adapters);
  layer.attention = softmax->projections();
  if (overrides) layer.mixer = overrides->make(i, *softmax, w);
  if (!layer.mixer) layer.mixer = std::move(softmax);
  if (cfg.is_sparse(i)) {
    const auto naming = cfg.block.expert_names;
    const auto router = w.get(names::router_weight(i, naming));
    const auto router_bias = names::has_router_bias(naming) ? w.get(names::router_bias(i, naming)) : at::Tensor();
    if (experts) {
      layer.routed_mlp = RoutedMlp(router, router_bias, cfg.moe.experts, experts, cfg.moe.top_k, cfg.moe.normalize_top_k);
    } else {
      std::vector<GatedMlp> all;
      if (naming == names::ExpertNames::stacked) {
        all = build_stacked_experts(cfg, i, w);
      } else {
        for (std::int64_t e = 0; e < cfg.moe.experts; ++e) all.push_back(build_expert(naming, cfg.expert_activation(), i, e, w));
      }
      layer.routed_mlp = RoutedMlp(router, router_bias, std::move(all), cfg.moe.top_k, cfg.moe.normalize_top_k);
    }
  } else {
    layer.mlp = GatedMlp(mlp_projection(LayerModule::gate_proj), mlp_projection(LayerModule::up_proj),
                         w.get(weight(LayerModule::down_proj)), w.take(bias(LayerModule::gate_proj)),
                         w.take(bias(LayerModule::up_proj)), w.optional(bias(LayerModule::down_proj)), cfg.block.activation,
                         layer.adapters);
  }
  w.release_taken();
  return layer;
}

}  // namespace

// A streamed model's source of layers: the checkpoint stays mapped (address space, not memory: each layer's pages
// are released once copied), with each layer's tensor specs, checked against the checkpoint once at load.
struct CausalLM::LayerStream {
  CheckpointWeights checkpoint;
  std::vector<std::vector<TensorSpec>> layer_specs;                  // each layer's, its experts' apart
  std::vector<std::vector<std::vector<TensorSpec>>> expert_specs;    // [layer][expert]: a routed layer's
  std::optional<MixerOverrides> overrides;
  std::optional<std::int64_t> resident;  // the layer copied in now
};

CausalLM CausalLM::load(const std::filesystem::path& dir, ModelConfig config, const LoadOptions& options,
                        const MixerOverrides* overrides) {
  if (!config.linearize.is_null() && !overrides)
    throw InputError(config.source, "linearize", "is a converted model: load it with load_model(), which builds its mixers");
  CausalLM model;
  model.config_ = std::move(config);
  model.options_ = options;
  const ModelConfig& cfg = model.config_;

  auto checkpoint = CheckpointWeights::open(dir);
  auto specs = decoder_tensors(*cfg.family, cfg);
  if (overrides) specs.insert(specs.end(), overrides->extra_tensors.begin(), overrides->extra_tensors.end());
  check_tensors(checkpoint, specs);
  // The model's own tensors (embeddings, final norm, head) and each layer's.
  std::vector<TensorSpec> own;
  std::vector<std::vector<TensorSpec>> per_layer(static_cast<std::size_t>(cfg.num_hidden_layers));
  for (auto& spec : specs) {
    const auto layer = names::layer_of(spec.name);
    (layer ? per_layer.at(static_cast<std::size_t>(*layer)) : own).push_back(std::move(spec));
  }
  auto w = ModelWeights::read(checkpoint, own, options.dtype, options.device);
  model.embed_ = w.get(names::kEmbedTokens);
  model.final_norm_ = w.get(names::kFinalNorm);
  model.lm_head_ = cfg.tie_word_embeddings ? model.embed_ : w.get(names::kLmHead);
  model.layers_.resize(static_cast<std::size_t>(cfg.num_hidden_layers));
  if (options.stream_layers) {
    // A routed layer's experts apart from the rest of the layer: copied in one at a time, as tokens pick them (stacked
    // experts as slices of their stacks, read from the mapping by the loader).
    std::vector<std::vector<std::vector<TensorSpec>>> per_expert(per_layer.size());
    for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
      if (!cfg.is_sparse(i)) continue;
      if (cfg.block.expert_names == names::ExpertNames::stacked) {
        const auto stacks = stack_names(i);
        auto& layer = per_layer[static_cast<std::size_t>(i)];
        layer.erase(std::remove_if(layer.begin(), layer.end(),
                                   [&](const TensorSpec& s) { return std::find(stacks.begin(), stacks.end(), s.name) != stacks.end(); }),
                    layer.end());
        continue;
      }
      std::map<std::string, std::int64_t> expert_of;
      for (std::int64_t e = 0; e < cfg.moe.experts; ++e)
        for (const auto p : {names::ExpertProjection::gate, names::ExpertProjection::up, names::ExpertProjection::down})
          expert_of[names::expert_weight(i, e, p, cfg.block.expert_names)] = e;
      auto& layer = per_layer[static_cast<std::size_t>(i)];
      auto& experts = per_expert[static_cast<std::size_t>(i)];
      experts.resize(static_cast<std::size_t>(cfg.moe.experts));
      const auto rest = std::stable_partition(layer.begin(), layer.end(), [&](const TensorSpec& s) { return !expert_of.count(s.name); });
      for (auto it = rest; it != layer.end(); ++it) experts[static_cast<std::size_t>(expert_of.at(it->name))].push_back(*it);
      layer.erase(rest, layer.end());
    }
    model.stream_ = std::make_shared<LayerStream>(
        LayerStream{std::move(checkpoint), std::move(per_layer), std::move(per_expert), std::nullopt, std::nullopt});
    if (overrides) model.stream_->overrides = *overrides;
    return model;
  }
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto layer_weights = ModelWeights::read(checkpoint, per_layer[static_cast<std::size_t>(i)], options.dtype, options.device);
    model.layers_[static_cast<std::size_t>(i)] = build_layer(cfg, i, layer_weights, overrides);
  }
  return model;
}

std::vector<DecoderLayer>& CausalLM::layers() {
  TORCH_CHECK(!stream_, "CausalLM: a streamed model holds one layer at a time; use layer(i)");
  return layers_;
}

const std::vector<DecoderLayer>& CausalLM::layers() const {
  TORCH_CHECK(!stream_, "CausalLM: a streamed model holds one layer at a time; use layer(i)");
  return layers_;
}

const DecoderLayer& CausalLM::layer(std::int64_t i) const {
  auto& slot = layers_.at(static_cast<std::size_t>(i));
  if (!stream_ || stream_->resident == i) return slot;
  if (stream_->resident) layers_[static_cast<std::size_t>(*stream_->resident)] = DecoderLayer{};  // dropped before the copy
  stream_->resident.reset();
  const auto started = std::chrono::steady_clock::now();
  auto w = ModelWeights::read(stream_->checkpoint, stream_->layer_specs[static_cast<std::size_t>(i)], options_.dtype, options_.device);
  RoutedMlp::ExpertLoader experts;
  if (config_.is_sparse(i) && config_.block.expert_names == names::ExpertNames::stacked) {
    // Expert e's slices of the mapped stacks, copied (a 128-expert layer's stacks take GBs; a token reads 4 experts),
    // then the stacks' pages released.
    experts = [stream = stream_, i, activation = config_.expert_activation(), options = options_](std::int64_t e) {
      std::array<at::Tensor, 4> slices;
      const auto names = stack_names(i);
      for (std::size_t t = 0; t < names.size(); ++t) {
        slices[t] = stream->checkpoint.tensor(names[t]).select(0, e).to(options.device, options.dtype, false, /*copy=*/true);
        stream->checkpoint.release(names[t]);
      }
      return stacked_expert(slices[0], slices[1], slices[2], slices[3], activation);
    };
  } else if (config_.is_sparse(i)) {
    experts = [stream = stream_, i, naming = config_.block.expert_names, activation = config_.expert_activation(), options = options_](std::int64_t e) {
      auto expert = ModelWeights::read(stream->checkpoint, stream->expert_specs[static_cast<std::size_t>(i)][static_cast<std::size_t>(e)],
                                       options.dtype, options.device);
      return build_expert(naming, activation, i, e, expert);
    };
  }
  slot = build_layer(config_, i, w, stream_->overrides ? &*stream_->overrides : nullptr, experts);
  stream_->resident = i;
  if (options_.layer_streamed) options_.layer_streamed(i, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return slot;
}

std::int64_t CausalLM::resident_layers() const {
  return std::count_if(layers_.begin(), layers_.end(), [](const DecoderLayer& layer) { return layer.mixer != nullptr; });
}

at::Tensor CausalLM::embed(const at::Tensor& ids, const CaptureFn& capture) const {
  const auto& block = config_.block;
  auto h = at::embedding(embed_, ids.to(embed_.device()));
  // Gemma scales by sqrt(hidden) rounded to the weights' dtype first (a buffer), Granite by its multiplier as a
  // Python float (a wrapped scalar, applied in fp32), as transformers does.
  if (block.embedding_scale != 1.0)
    h = block.embedding_scale_in_weight_dtype ? h * at::scalar_tensor(block.embedding_scale, embed_.options()) : h * block.embedding_scale;
  if (capture) capture(names::kEmbedCapture, h);
  return h;
}

at::Tensor CausalLM::block(std::size_t i, const at::Tensor& x, const BlockCall& call, DecodeState* state,
                           const CaptureFn& listen) const {
  const auto layer_index = static_cast<std::int64_t>(i);
  const DecoderLayer& this_layer = layer(layer_index);
  MixerState* layer_state = nullptr;
  if (state) {
    auto& slot = state->layers.at(i);
    if (!slot) slot = this_layer.mixer->new_state();
    layer_state = slot.get();
  }
  const auto rms = [this](const at::Tensor& v, const at::Tensor& weight) {
    return rms_norm(config_.block.norm, v, weight, config_.rms_norm_eps);
  };
  // The block's primitives (converter/model/block_program.h) on this layer's tensors.
  using RmsNorm = decltype(rms);
  struct Ops {
    using Value = at::Tensor;
    const DecoderLayer& layer;
    const RmsNorm& rms_norm;
    MixerCall call;
    std::int64_t start;
    MixerState* state;
    at::Tensor norm(const at::Tensor& v, BlockNorm which) const {
      switch (which) {
        case BlockNorm::input: return rms_norm(v, layer.input_norm);
        case BlockNorm::post_attention: return rms_norm(v, layer.post_attention_norm);
        case BlockNorm::pre_feedforward: return rms_norm(v, layer.pre_feedforward_norm);
        case BlockNorm::post_feedforward: break;
      }
      return rms_norm(v, layer.post_feedforward_norm);
    }
    at::Tensor mixer(const at::Tensor& v) const { return layer.mixer->forward(v, start, state, call); }
    at::Tensor mlp(const at::Tensor& v) const { return layer.routed_mlp.defined() ? layer.routed_mlp.forward(v) : layer.mlp.forward(v); }
    static at::Tensor scale(const at::Tensor& v, double s) { return v * s; }
    static at::Tensor add(const at::Tensor& a, const at::Tensor& b) { return a + b; }
  } ops{this_layer, rms, MixerCall{listen, names::mixer_scope(layer_index), call.form, call.token_mask, call.positions}, call.start,
        layer_state};
  auto v = block_program(ops, config_.block, x);
  if (listen) {
    listen(names::capture(layer_index, names::Capture::attn_in), v.attn_in);
    listen(names::capture(layer_index, names::Capture::attn_out), v.attn_out);
    listen(names::capture(layer_index, names::Capture::mlp_out), v.mlp_out);
    listen(names::capture(layer_index, names::Capture::out), v.out);
  }
  return std::move(v.out);
}

at::Tensor CausalLM::finish(at::Tensor h, const CaptureFn& capture, bool last_only, bool hidden_only) const {
  if (last_only) h = h.narrow(1, h.size(1) - 1, 1);
  h = rms_norm(config_.block.norm, h, final_norm_, config_.rms_norm_eps);
  if (capture) capture(names::kNormCapture, h);
  if (hidden_only) return h;
  auto logits = logits_of(h);
  if (capture) capture(names::kLogitsCapture, logits);
  return logits;
}

at::Tensor CausalLM::run(const at::Tensor& ids, std::int64_t start, DecodeState* state, const CaptureFn& capture,
                         kernels::MixerForm form, bool last_only, bool hidden_only, const at::Tensor& attention_mask) const {
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong, "CausalLM: ids must be int64 [B, T]");
  BlockCall call{start, form, {}, {}};
  // A padded batch: which tokens are real, and each row's positions counting its real tokens (transformers'
  // cumsum - 1; a padding's own position is irrelevant, every real token ignores it).
  if (attention_mask.defined()) {
    TORCH_CHECK(state == nullptr, "CausalLM: a padded batch (attention_mask) runs stateless");
    TORCH_CHECK(attention_mask.sizes() == ids.sizes(), "CausalLM: attention_mask must be [B, T] like ids");
    call.token_mask = attention_mask.to(embed_.device()).to(at::kBool);
    const auto& token_mask = call.token_mask;
    // Left padding only: a row's tokens are contiguous at its end, so index distances are token distances (the
    // windows, the conv taps and the LoLCATs shift count columns).
    TORCH_CHECK(ids.size(1) < 2 || token_mask.narrow(1, 1, ids.size(1) - 1).ge(token_mask.narrow(1, 0, ids.size(1) - 1)).all().item<bool>(),
                "CausalLM: attention_mask must be left padding (0s, then 1s, in every row)");
    call.positions = (token_mask.to(at::kLong).cumsum(1) - 1).clamp_min(0);
  }
  auto h = embed(ids, capture);
  // A stateless training forward may keep only each block's input (kernels/checkpoint.h); checkpointed blocks
  // run again in the backward, after run() has returned: the lambda holds its own copy of `call`.
  const bool checkpoint = checkpoint_blocks_ && state == nullptr && !capture;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (checkpoint)
      h = kernels::checkpointed([this, i, call](const at::Tensor& x) { return block(i, x, call, nullptr, CaptureFn()); }, h);
    else
      h = block(i, h, call, state, capture);
  }
  return finish(std::move(h), capture, last_only, hidden_only);
}

std::vector<at::Tensor> CausalLM::run_layer_major(const std::vector<SequenceRun>& runs) const {
  // Each run's pieces as prefill() cuts them, and each piece's hidden states between layers.
  struct Pending {
    std::vector<std::int64_t> cuts;  // piece lengths after prefill's own cutting
    std::vector<bool> ends_piece;    // whether a cut ends one of the caller's pieces (its logits are returned)
    std::vector<at::Tensor> hidden;  // per cut
    DecodeState state;
  };
  std::vector<Pending> pending(runs.size());
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const auto& run = runs[r];
    TORCH_CHECK(run.ids.dim() == 2 && run.ids.scalar_type() == at::kLong, "CausalLM: ids must be int64 [B, T]");
    auto& p = pending[r];
    const auto ids = run.ids.to(embed_.device());
    if (run.pieces.empty()) {
      p.cuts = {ids.size(1)};
      p.ends_piece = {true};
    } else {
      TORCH_CHECK(!run.capture && run.form == kernels::MixerForm::chunked, "CausalLM: a piece run is chunked, without capture (as prefill)");
      p.state = new_state();
      std::int64_t total = 0;
      for (const auto piece : run.pieces) {
        for (const auto cut : prefill_pieces(piece, /*capture=*/false)) p.cuts.push_back(cut), p.ends_piece.push_back(false);
        p.ends_piece.back() = true;
        total += piece;
      }
      TORCH_CHECK(total == ids.size(1), "CausalLM: a run's pieces must add up to its length");
    }
    std::int64_t from = 0;
    for (const auto cut : p.cuts) {
      p.hidden.push_back(embed(ids.narrow(1, from, cut), p.cuts.size() == 1 ? run.capture : CaptureFn()));
      from += cut;
    }
  }
  for (std::size_t i = 0; i < layers_.size(); ++i)
    for (std::size_t r = 0; r < runs.size(); ++r) {
      auto& p = pending[r];
      const bool stateless = runs[r].pieces.empty();
      std::int64_t start = 0;
      for (auto& h : p.hidden) {
        h = block(i, h, BlockCall{start, runs[r].form, {}, {}}, stateless ? nullptr : &p.state, runs[r].capture);
        start += h.size(1);
      }
    }
  std::vector<at::Tensor> out;
  for (std::size_t r = 0; r < runs.size(); ++r) {
    auto& p = pending[r];
    if (runs[r].pieces.empty()) {
      out.push_back(finish(std::move(p.hidden[0]), runs[r].capture, /*last_only=*/false, /*hidden_only=*/false));
      continue;
    }
    std::vector<at::Tensor> rows;
    for (std::size_t c = 0; c < p.cuts.size(); ++c)
      if (p.ends_piece[c]) rows.push_back(finish(std::move(p.hidden[c]), {}, /*last_only=*/true, /*hidden_only=*/false));
    out.push_back(at::cat(rows, 1));
  }
  return out;
}

void CausalLM::warm_up(const at::Tensor& ids) const {
  if (!stream_) {
    forward(ids);
    return;
  }
  block(0, embed(ids, {}), BlockCall{}, nullptr, {});
}

at::Tensor CausalLM::hidden_states(const at::Tensor& ids) const {
  return run(ids, 0, nullptr, {}, kernels::MixerForm::chunked, /*last_only=*/false, /*hidden_only=*/true);
}

at::Tensor CausalLM::logits_of(const at::Tensor& hidden) const {
  auto logits = kernels::linear_projection(hidden, lm_head_);
  if (config_.block.logits_divisor != 1.0) logits = logits / config_.block.logits_divisor;
  const auto& cap = config_.block.final_logit_softcap;
  return cap ? at::tanh(logits / *cap) * *cap : logits;
}

at::Tensor CausalLM::forward(const at::Tensor& ids, const CaptureFn& capture, kernels::MixerForm form,
                             const at::Tensor& attention_mask) const {
  return run(ids, 0, nullptr, capture, form, /*last_only=*/false, /*hidden_only=*/false, attention_mask);
}

CausalLM CausalLM::source_model() const {
  TORCH_CHECK(!stream_, "CausalLM: source_model() shares resident layers; a streamed model has none");
  CausalLM source;
  source.config_ = config_;
  if (config_.linearize.is_object()) {  // a converted model's config names the source architecture
    source.config_.architecture = config_.linearize["source"].value("architecture", config_.architecture);
    source.config_.linearize = nlohmann::json();
  }
  source.options_ = options_;
  source.embed_ = embed_;
  source.final_norm_ = final_norm_;
  source.lm_head_ = lm_head_;
  for (const auto& layer : layers_) {
    DecoderLayer copy;
    copy.input_norm = layer.input_norm;
    copy.post_attention_norm = layer.post_attention_norm;
    copy.pre_feedforward_norm = layer.pre_feedforward_norm;
    copy.post_feedforward_norm = layer.post_feedforward_norm;
    copy.mixer = std::make_unique<SoftmaxAttentionMixer>(layer.mixer->source_attention().without_adapters());
    copy.mlp = layer.mlp.without_adapters();
    copy.routed_mlp = layer.routed_mlp;
    copy.attention = layer.attention;
    source.layers_.push_back(std::move(copy));
  }
  return source;
}

DecodeState CausalLM::new_state() const {
  DecodeState state;
  for (const auto& layer : layers_) state.layers.push_back(layer.mixer ? layer.mixer->new_state() : nullptr);
  return state;
}

std::vector<std::int64_t> CausalLM::prefill_pieces(std::int64_t T, bool capture) const {
  const std::int64_t piece = capture || !config_.linearize.is_object() ? T : kPrefillPiece;
  std::vector<std::int64_t> pieces;
  for (std::int64_t first = 0; first < T; first += piece) pieces.push_back(std::min(piece, T - first));
  return pieces;
}

at::Tensor CausalLM::prefill(const at::Tensor& ids, DecodeState& state, const CaptureFn& capture) const {
  // Only the last position's logits are needed to continue: project just that row through lm_head, and only
  // after the last piece (a mixer program's full-length temporaries, ~60 hidden-size rows per token in a
  // Mamba-2 layer, made a 16K-token prefill 1 GiB larger than its source's before pieces).
  const auto pieces = prefill_pieces(ids.size(1), static_cast<bool>(capture));
  at::Tensor out;
  std::int64_t first = 0;
  for (std::size_t p = 0; p < pieces.size(); ++p) {
    const bool last = p + 1 == pieces.size();
    out = run(ids.narrow(1, first, pieces[p]), state.position, &state, capture, kernels::MixerForm::chunked, /*last_only=*/true,
              /*hidden_only=*/!last);
    state.position += pieces[p];
    first += pieces[p];
  }
  return out.select(1, 0);
}

at::Tensor CausalLM::step(const at::Tensor& ids, DecodeState& state) const {
  return prefill(ids.view({-1, 1}), state);
}

}  // namespace linearize
