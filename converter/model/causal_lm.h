// One decoder for every model: embeddings (scaled where the family says), N blocks (token mixer -> residual ->
// gated MLP -> residual, with RMSNorms before or after each as the BlockSpec places them: block_program.h), final
// norm, lm_head (tied or not), logits divided and soft-capped where the family says. The block is what the family's
// BlockSpec says. Source and converted models differ only in their list of mixers.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "converter/model/linear_adapter.h"
#include "converter/model/softmax_attention_mixer.h"
#include "converter/model/token_mixer.h"
#include "converter/model_config.h"

namespace linearize {

class GatedMlp {
 public:
  GatedMlp() = default;
  // gate, up: [ff, d]; down: [d, ff]; biases undefined when absent. Gate and up are stored as one
  // [2 ff, d] matrix (one GEMM instead of two); gate() and up() are views of it.
  // `adapters`: the layer's; adapters on gate/up/down_proj add their deltas.
  GatedMlp(const at::Tensor& gate, const at::Tensor& up, at::Tensor down, const at::Tensor& gate_bias,
           const at::Tensor& up_bias, at::Tensor down_bias, GatedActivation activation,
           std::shared_ptr<const LayerAdapters> adapters = nullptr);
  // down(act(gate x) * up x): SwiGLU with silu, GeGLU with gelu-tanh (Shazeer 2020, eqs. 5-6); gpt-oss's clamped
  // SwiGLU (GatedActivation).
  at::Tensor forward(const at::Tensor& x) const;
  // Undefined for a layer whose MLP is routed (RoutedMlp).
  at::Tensor gate() const { return gate_up_.defined() ? gate_up_.narrow(0, 0, gate_up_.size(0) / 2) : at::Tensor(); }
  at::Tensor up() const { return gate_up_.defined() ? gate_up_.narrow(0, gate_up_.size(0) / 2, gate_up_.size(0) / 2) : at::Tensor(); }
  const at::Tensor& down() const { return down_; }
  at::Tensor gate_bias() const { return gate_up_bias_.defined() ? gate_up_bias_.narrow(0, 0, gate_up_bias_.size(0) / 2) : at::Tensor(); }
  at::Tensor up_bias() const {
    return gate_up_bias_.defined() ? gate_up_bias_.narrow(0, gate_up_bias_.size(0) / 2, gate_up_bias_.size(0) / 2) : at::Tensor();
  }
  const at::Tensor& down_bias() const { return down_bias_; }
  // This MLP with no adapters, sharing every tensor.
  GatedMlp without_adapters() const;

 private:
  at::Tensor gated(const at::Tensor& gate, const at::Tensor& up) const;

  at::Tensor gate_up_, gate_up_bias_, down_, down_bias_;
  GatedActivation activation_;
  std::shared_ptr<const LayerAdapters> adapters_;
};

// A routed mixture of gated experts (MoeConfig, Shazeer et al. 2017 eqs. 1-3): p = softmax(router x) in fp32, the top
// k of p (renormalised where the family says) cast to x's dtype, y = sum over the chosen e of p_e expert_e(x), each
// expert's rows gathered and added back in ascending expert order, as transformers' Qwen3MoeExperts does. Only the
// experts some token chose run. The experts are frozen: no adapters act here.
class RoutedMlp {
 public:
  // Expert e, copied in from wherever the experts are kept.
  using ExpertLoader = std::function<GatedMlp(std::int64_t expert)>;
  RoutedMlp() = default;
  // router_bias: gpt-oss's [experts], undefined for none.
  RoutedMlp(at::Tensor router, at::Tensor router_bias, std::vector<GatedMlp> experts, std::int64_t top_k, bool normalize_top_k);
  // A streamed layer's: each expert copied in when a token first picks it (a decode step of a 128-expert layer
  // reads the few experts its tokens chose, not all of them).
  RoutedMlp(at::Tensor router, at::Tensor router_bias, std::int64_t experts, ExpertLoader load, std::int64_t top_k,
            bool normalize_top_k);
  at::Tensor forward(const at::Tensor& x) const;
  bool defined() const { return router_.defined(); }
  const at::Tensor& router() const { return router_; }
  const at::Tensor& router_bias() const { return router_bias_; }
  // Every expert (a resident layer's: a streamed one throws).
  const std::vector<GatedMlp>& experts() const;

 private:
  const GatedMlp& expert(std::size_t e) const;

  at::Tensor router_;       // [experts, hidden]
  at::Tensor router_bias_;  // [experts] or undefined
  mutable std::vector<GatedMlp> experts_;  // a streamed layer's are copied in on first use
  ExpertLoader load_;
  std::int64_t top_k_ = 0;
  bool normalize_top_k_ = false;
};

struct DecoderLayer {
  // RMSNorm weights [d], by their HF names (block_program.h's BlockNorm); undefined where the placement has none.
  at::Tensor input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
  std::unique_ptr<TokenMixer> mixer;
  GatedMlp mlp;          // the dense MLP, or...
  RoutedMlp routed_mlp;  // ...on a MoE layer (ModelConfig::is_sparse) the routed experts, `mlp` then empty
  AttentionProjections attention;  // the source attention's weights (views), which converted mixers reuse
  std::shared_ptr<LayerAdapters> adapters = std::make_shared<LayerAdapters>();  // shared with mixer and MLP

  // A projection's frozen weight [out, in] and bias (undefined when absent).
  at::Tensor weight(Projection projection) const;
  at::Tensor bias(Projection projection) const;
};

// Per-sequence decode state: every layer's mixer state and the next position. A streamed model's layer has its
// state made when a forward first reaches it (null until then).
struct DecodeState {
  std::vector<std::unique_ptr<MixerState>> layers;
  std::int64_t position = 0;
  std::int64_t bytes() const;
};

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // computation dtype; weights are converted on load
  at::Device device = at::kCPU;
  // Streams the decoder layers from the mapped checkpoint (docs/architecture.md#streamed-layers): the embeddings,
  // final norm and head stay resident; a layer's weights are copied in when a forward reaches it and dropped
  // when another layer is copied in, so one layer is resident at a time, whatever the depth.
  bool stream_layers = false;
  // Told each time a streamed layer has been copied in (its index, the copy's wall seconds): a streamed pass over a
  // large model takes minutes, and the CLI shows where it is.
  std::function<void(std::int64_t layer, double seconds)> layer_streamed;
};

// A sequence fed in pieces, the state carried from each to the next, as prefill() and step() feed it; or, with no
// pieces, one stateless forward() (CausalLM::run_layer_major).
struct SequenceRun {
  at::Tensor ids;                     // int64 [B, T]
  std::vector<std::int64_t> pieces;   // lengths summing to T; empty: stateless
  kernels::MixerForm form = kernels::MixerForm::chunked;  // a stateless run's
  CaptureFn capture;                  // a stateless run's
};

class ModelWeights;

// The source attention's shape in `layer` (its window on sliding layers).
SoftmaxAttentionShape attention_shape(const ModelConfig& config, std::int64_t layer);

// How a converted model replaces layers' mixers at load time: the tensors it adds (checked with the
// decoder's in one pass) and a factory given the source attention and every loaded weight.
struct MixerOverrides {
  std::vector<TensorSpec> extra_tensors;
  std::function<std::unique_ptr<TokenMixer>(std::int64_t layer, const SoftmaxAttentionMixer& source,
                                            const ModelWeights& weights)>
      make;  // returns null to keep the softmax mixer
};

class CausalLM {
 public:
  // A Hugging Face checkpoint directory of a registered family, with softmax-attention mixers unless
  // `overrides` replaces some.
  static CausalLM load(const std::filesystem::path& dir, const LoadOptions& options = {},
                       const MixerOverrides* overrides = nullptr);
  // The same, from a config already read (converted models pass theirs).
  static CausalLM load(const std::filesystem::path& dir, ModelConfig config, const LoadOptions& options,
                       const MixerOverrides* overrides);

  // Stateless forward. ids: int64 [B, T] -> logits [B, T, vocab]. `form`: how linear mixers compute.
  // attention_mask [B, T] (1 token, 0 padding; Hugging Face's), left padding only: a padded batch, each row at
  // its own positions (counting its tokens from 0), whose rows' logits equal each row's alone
  // (docs/architecture.md#padded-batches).
  at::Tensor forward(const at::Tensor& ids, const CaptureFn& capture = {},
                     kernels::MixerForm form = kernels::MixerForm::chunked, const at::Tensor& attention_mask = {}) const;

  // The model this one was converted from, sharing every tensor (no copy): each layer's source attention
  // (TokenMixer::source_attention) and MLP without adapters, the same norms, embeddings and head. Equal
  // to loading the source checkpoint, whose tensors a conversion copies bit for bit (verify L0), so distill
  // holds one model, not a student and a teacher (docs/architecture.md#one-model-pluggable-token-mixers: never two copies).
  CausalLM source_model() const;

  // forward() in two parts, for a loss computed a slice of positions at a time: the final norm's output
  // [B, T, hidden], and the logits of such hidden states (lm_head and the soft-cap), [..., vocab].
  at::Tensor hidden_states(const at::Tensor& ids) const;
  at::Tensor logits_of(const at::Tensor& hidden) const;

  DecodeState new_state() const;
  // Feeds ids [B, T] after what `state` has seen; returns the logits of the last position, [B, vocab]. A converted
  // model's prompt longer than kPrefillPiece tokens (and no capture) runs in pieces of that many, each continuing
  // from the state the one before left: the same function (verify L1's split-prompt rows), with the temporaries
  // of one piece. A source keeps one call: SDPA bounds its temporaries already, and attention over a cache
  // takes the masked path (a 16K prompt of the SmolLM2-135M shape prefilled 28% slower in pieces).
  at::Tensor prefill(const at::Tensor& ids, DecodeState& state, const CaptureFn& capture = {}) const;
  static constexpr std::int64_t kPrefillPiece = 2048;
  // One token per sequence: ids [B] -> logits [B, vocab].
  at::Tensor step(const at::Tensor& ids, DecodeState& state) const;

  // Many sequences layer by layer: every run through layer i before any reaches layer i + 1, so a streamed model
  // reads each layer once for all of them (their activations are kept between layers). Each run computes what
  // forward() (no pieces) or prefill() per piece computes, the same operations on the same shapes, so the same
  // bits. Per run: a stateless run's logits [B, T, vocab]; a piece run's [B, pieces, vocab], each piece's last
  // position (what prefill returns for it).
  std::vector<at::Tensor> run_layer_major(const std::vector<SequenceRun>& runs) const;

  // One discarded computation before any recorded one (verify's warm-up: the first GEMMs of a process may split
  // their work differently while the BLAS threads start): the whole forward, or a streamed model's first block
  // alone, which starts the threads as well without reading every layer.
  void warm_up(const at::Tensor& ids) const;

  // Training memory: a stateless forward without capture keeps only each block's input and recomputes the
  // block in the backward (kernels/checkpoint.h). Off by default; the source model() does not inherit it.
  void set_checkpoint_blocks(bool on) { checkpoint_blocks_ = on; }
  bool checkpoint_blocks() const { return checkpoint_blocks_; }

  const ModelConfig& config() const { return config_; }
  const LoadOptions& options() const { return options_; }
  // Every layer, resident (a streamed model has none: it throws; use layer()).
  std::vector<DecoderLayer>& layers();
  const std::vector<DecoderLayer>& layers() const;
  // Layer i; a streamed model copies it in now, dropping the one resident before (a reference to that one
  // dangles then).
  const DecoderLayer& layer(std::int64_t i) const;
  bool streams_layers() const { return stream_ != nullptr; }
  // How many layers hold their weights now, counted over the layers themselves (all of them unless streamed).
  std::int64_t resident_layers() const;

 private:
  // Per-call settings of the blocks: the first position, the form, and a padded batch's token mask and positions.
  struct BlockCall {
    std::int64_t start = 0;
    kernels::MixerForm form = kernels::MixerForm::chunked;
    at::Tensor token_mask, positions;
  };
  at::Tensor embed(const at::Tensor& ids, const CaptureFn& capture) const;
  // Layer i's block on its input x (state: the layer's, or null); a streamed layer is copied in first.
  at::Tensor block(std::size_t i, const at::Tensor& x, const BlockCall& call, DecodeState* state, const CaptureFn& listen) const;
  // The final norm (of the last position alone when last_only) and, unless hidden_only, the logits.
  at::Tensor finish(at::Tensor h, const CaptureFn& capture, bool last_only, bool hidden_only) const;
  // The lengths prefill() feeds a piece of T tokens in: kPrefillPiece at a time for a converted model without capture.
  std::vector<std::int64_t> prefill_pieces(std::int64_t T, bool capture) const;

  // Everything above, from absolute position `start`; state may be null. `last_only` runs the final norm
  // and lm_head on the last position alone (all a decoder continuing the sequence needs); `hidden_only`
  // stops before lm_head.
  at::Tensor run(const at::Tensor& ids, std::int64_t start, DecodeState* state, const CaptureFn& capture,
                 kernels::MixerForm form, bool last_only, bool hidden_only = false, const at::Tensor& attention_mask = {}) const;

  ModelConfig config_;
  LoadOptions options_;
  at::Tensor embed_, final_norm_, lm_head_;
  // Mutable for a streamed model, whose layers are copied in and dropped as forwards reach them.
  mutable std::vector<DecoderLayer> layers_;
  struct LayerStream;  // the mapped checkpoint and each layer's tensor specs (causal_lm.cpp)
  std::shared_ptr<LayerStream> stream_;
  bool checkpoint_blocks_ = false;
};

}  // namespace linearize
