// Every tensor and capture name, built and parsed here only (docs/architecture.md#names): the Hugging Face names of a
// decoder checkpoint, the recipes' tensors under a layer's self_attn, PEFT's LoRA factors, and the names
// the forward gives its intermediates (CaptureFn). A typo elsewhere is then a compile error, not a
// tensor that silently is not found.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace linearize::names {

// A decoder layer's modules: model.layers.{i}.<module>.
enum class LayerModule {
  input_layernorm,
  post_attention_layernorm,
  pre_feedforward_layernorm,   // Gemma's sandwich norms (post_feedforward_layernorm also OLMo 2's post-norm)
  post_feedforward_layernorm,
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  q_norm,  // RMSNorm of q and k: per head (Qwen3, Gemma 3) or over the whole projection (OLMo 2, OLMoE)
  k_norm,
  gate_proj,
  up_proj,
  down_proj,
  qkv_proj,      // Phi-3's fused [q; k; v] and [gate; up] (BlockSpec::fused_projections)
  gate_up_proj,
};

const char* module_name(LayerModule module);                       // "q_proj"
std::string module_in_layer(LayerModule module);                  // "self_attn.q_proj"
std::string module_path(std::int64_t layer, LayerModule module);  // "model.layers.3.self_attn.q_proj"
std::string weight(std::int64_t layer, LayerModule module);        // module_path + ".weight"
std::string bias(std::int64_t layer, LayerModule module);          // module_path + ".bias"

// A routed MoE MLP's tensors, by the family's naming: the router [experts, hidden] and each expert's SwiGLU projections.
//   mlp_experts       model.layers.{i}.mlp.gate.weight, ...mlp.experts.{e}.{gate,up,down}_proj.weight (Qwen3-MoE, OLMoE)
//   block_sparse_moe  model.layers.{i}.block_sparse_moe.gate.weight, ...block_sparse_moe.experts.{e}.{w1,w3,w2}.weight (Mixtral)
//   stacked           model.layers.{i}.mlp.router.{weight,bias}, every expert in one tensor per projection (gpt-oss):
//                     mlp.experts.gate_up_proj [experts, hidden, 2 ff] (x @ it; gate and up columns interleaved,
//                     gate even), .gate_up_proj_bias [experts, 2 ff], .down_proj [experts, ff, hidden], .down_proj_bias
enum class ExpertNames { mlp_experts, block_sparse_moe, stacked };
enum class ExpertProjection { gate, up, down };
std::string router_weight(std::int64_t layer, ExpertNames naming);
std::string router_bias(std::int64_t layer, ExpertNames naming);  // where has_router_bias
bool has_router_bias(ExpertNames naming);                          // gpt-oss's (stacked) router has one
// Per-expert tensors (mlp_experts, block_sparse_moe).
std::string expert_weight(std::int64_t layer, std::int64_t expert, ExpertProjection projection, ExpertNames naming);
enum class StackedExperts { gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias };
std::string stacked_experts(std::int64_t layer, StackedExperts tensor);  // model.layers.{i}.mlp.experts.gate_up_proj

// gpt-oss's learned attention sinks, one logit per query head: model.layers.{i}.self_attn.sinks.
std::string attention_sinks(std::int64_t layer);

// The model's own tensors outside the layers.
inline constexpr const char* kEmbedTokens = "model.embed_tokens.weight";
inline constexpr const char* kFinalNorm = "model.norm.weight";
inline constexpr const char* kLmHead = "lm_head.weight";

// A recipe tensor, stored as model.layers.{i}.self_attn.<name> (NewTensor::name is the <name>).
std::string recipe_tensor(std::int64_t layer, const std::string& name);
// The names the recipes share.
inline constexpr const char* kFeatureMapQWeight = "feature_map_q.weight";
inline constexpr const char* kFeatureMapKWeight = "feature_map_k.weight";
inline constexpr const char* kFeatureMapQBias = "feature_map_q.bias";
inline constexpr const char* kFeatureMapKBias = "feature_map_k.bias";
inline constexpr const char* kWindowFactors = "window_factors";
// gated-deltanet's: beta = sigmoid(x . w + b), and Mamba-2's decay -exp(A_log) softplus(x . w + dt_bias).
inline constexpr const char* kBetaWeight = "beta_proj.weight";
inline constexpr const char* kBetaBias = "beta_proj.bias";
inline constexpr const char* kDecayWeight = "decay_proj.weight";
inline constexpr const char* kDecayBias = "decay_proj.bias";
inline constexpr const char* kDecayLogScale = "A_log";
// mamba2's (Mamba-2's in_proj parts and the rest of its layer): the gate z, dt's projection and bias, the skip
// D and the short convolution; the RMSNorm on a mixer's output (mamba2's gated norm, transnormer's NormAttention).
inline constexpr const char* kGateWeight = "z_proj.weight";
inline constexpr const char* kDtWeight = "dt_proj.weight";
inline constexpr const char* kDtBias = "dt_bias";
inline constexpr const char* kSkip = "D";
inline constexpr const char* kConvWeight = "conv1d.weight";
inline constexpr const char* kConvBias = "conv1d.bias";
inline constexpr const char* kOutputNormWeight = "norm.weight";

// Qwen3.5's Gated DeltaNet layer (export-native --layout qwen3_5): model.layers.{i}.linear_attn.<part>.
std::string qwen3_5_linear_attn(std::int64_t layer, const std::string& part);
inline constexpr const char* kQwen35InProjQkv = "in_proj_qkv.weight";
inline constexpr const char* kQwen35InProjZ = "in_proj_z.weight";
inline constexpr const char* kQwen35InProjB = "in_proj_b.weight";
inline constexpr const char* kQwen35InProjA = "in_proj_a.weight";
inline constexpr const char* kQwen35Conv = "conv1d.weight";
inline constexpr const char* kQwen35DtBias = "dt_bias";
inline constexpr const char* kQwen35ALog = "A_log";
inline constexpr const char* kQwen35Norm = "norm.weight";
inline constexpr const char* kQwen35OutProj = "out_proj.weight";

// GraniteMoeHybrid's layout (export-native --layout granitehybrid): its Mamba-2 mixer, model.layers.{i}.mamba.<part>,
// and its dense MLP, model.layers.{i}.shared_mlp.<part>.
std::string granite_mamba(std::int64_t layer, const std::string& part);
std::string granite_shared_mlp(std::int64_t layer, const std::string& part);
inline constexpr const char* kGraniteInProj = "in_proj.weight";
inline constexpr const char* kGraniteConvWeight = "conv1d.weight";
inline constexpr const char* kGraniteConvBias = "conv1d.bias";
inline constexpr const char* kGraniteDtBias = "dt_bias";
inline constexpr const char* kGraniteALog = "A_log";
inline constexpr const char* kGraniteSkip = "D";
inline constexpr const char* kGraniteNorm = "norm.weight";
inline constexpr const char* kGraniteOutProj = "out_proj.weight";
inline constexpr const char* kGraniteMlpIn = "input_linear.weight";
inline constexpr const char* kGraniteMlpOut = "output_linear.weight";

// A module path's weight (what a LoRA merge replaces): <path>.weight. (The LoRA factors' names are PEFT's
// file format: formats/peft_adapter.h.)
std::string weight_of(const std::string& module_path);
// The layer and module of a module path; nullopt when it names no decoder layer module.
struct ModulePath {
  std::int64_t layer;
  LayerModule module;
};
std::optional<ModulePath> parse_module_path(const std::string& path);

// The layer a model.layers.{i}.* tensor name belongs to; nullopt for the model's own tensors.
std::optional<std::int64_t> layer_of(const std::string& tensor_name);

// What the forward captures of each layer: layers.{i}.<what>.
enum class Capture {
  attn_in,   // the mixer's input (after the input norm; the residual stream itself with post-norms)
  attn_out,  // the mixer's output (before an output norm and the residual scale)
  mlp_out,   // the MLP's output
  out,       // the residual stream after the layer
};
std::string capture(std::int64_t layer, Capture what);  // "layers.3.attn_out"
struct LayerCapture {
  std::int64_t layer;
  Capture what;
};
// The layer and kind of a layer capture; nullopt for any other name (the mixer's, embed, norm, logits).
std::optional<LayerCapture> parse_capture(const std::string& name);
// The model-level captures.
inline constexpr const char* kEmbedCapture = "embed";
inline constexpr const char* kNormCapture = "norm";
inline constexpr const char* kLogitsCapture = "logits";

// A layer's mixer scope (MixerCall::scope, "layers.3.mixer"), and the mixers' own captures under it.
std::string mixer_scope(std::int64_t layer);
enum class MixerCapture {
  q, k, v,  // the softmax attention's heads, after q/k norms and RoPE
  y,        // a window hybrid's output before o_proj
  o_lin,    // a linear mixer's output before o_proj
};
std::string capture(const std::string& scope, MixerCapture what);  // "<scope>.y"
bool is_capture(const std::string& name, MixerCapture what);        // of any scope

}  // namespace linearize::names
