#include "converter/names.h"

#include <array>
#include <charconv>
#include <stdexcept>

namespace linearize::names {
namespace {

constexpr const char* kLayerPrefix = "model.layers.";
constexpr const char* kCapturePrefix = "layers.";

struct ModuleEntry {
  const char* name;
  const char* parent;  // "self_attn." or "mlp." or "" (the norms sit on the layer)
};

constexpr std::array<ModuleEntry, 15> kModules{{
    {"input_layernorm", ""},
    {"post_attention_layernorm", ""},
    {"pre_feedforward_layernorm", ""},
    {"post_feedforward_layernorm", ""},
    {"q_proj", "self_attn."},
    {"k_proj", "self_attn."},
    {"v_proj", "self_attn."},
    {"o_proj", "self_attn."},
    {"q_norm", "self_attn."},
    {"k_norm", "self_attn."},
    {"gate_proj", "mlp."},
    {"up_proj", "mlp."},
    {"down_proj", "mlp."},
    {"qkv_proj", "self_attn."},
    {"gate_up_proj", "mlp."},
}};

constexpr std::array<const char*, 4> kCaptures{"attn_in", "attn_out", "mlp_out", "out"};
constexpr std::array<const char*, 5> kMixerCaptures{"q", "k", "v", "y", "o_lin"};

const ModuleEntry& entry(LayerModule module) { return kModules[static_cast<std::size_t>(module)]; }

std::string layer_prefix(std::int64_t layer) { return kLayerPrefix + std::to_string(layer) + "."; }

// "<prefix><layer>.<rest>" split into the layer and the rest; nullopt for any other name.
std::optional<std::pair<std::int64_t, std::string>> split_layer_name(const std::string& name, const char* prefix) {
  const auto pos = std::char_traits<char>::length(prefix);
  if (name.compare(0, pos, prefix) != 0) return std::nullopt;
  const auto dot = name.find('.', pos);
  if (dot == std::string::npos || dot == pos || name[pos] < '0' || name[pos] > '9') return std::nullopt;
  std::int64_t layer = 0;
  const auto [end, error] = std::from_chars(name.data() + pos, name.data() + dot, layer);
  if (error != std::errc() || end != name.data() + dot) return std::nullopt;
  return std::make_pair(layer, name.substr(dot + 1));
}

}  // namespace

const char* module_name(LayerModule module) { return entry(module).name; }

std::string module_in_layer(LayerModule module) { return std::string(entry(module).parent) + entry(module).name; }

std::string module_path(std::int64_t layer, LayerModule module) { return layer_prefix(layer) + module_in_layer(module); }

std::string weight(std::int64_t layer, LayerModule module) { return module_path(layer, module) + ".weight"; }
std::string bias(std::int64_t layer, LayerModule module) { return module_path(layer, module) + ".bias"; }

namespace {
const char* expert_scope(ExpertNames naming) { return naming == ExpertNames::block_sparse_moe ? "block_sparse_moe." : "mlp."; }
const char* router_module(ExpertNames naming) { return naming == ExpertNames::stacked ? "router" : "gate"; }
}  // namespace

std::string router_weight(std::int64_t layer, ExpertNames naming) {
  return layer_prefix(layer) + expert_scope(naming) + router_module(naming) + ".weight";
}
std::string router_bias(std::int64_t layer, ExpertNames naming) {
  return layer_prefix(layer) + expert_scope(naming) + router_module(naming) + ".bias";
}

bool has_router_bias(ExpertNames naming) { return naming == ExpertNames::stacked; }

std::string stacked_experts(std::int64_t layer, StackedExperts tensor) {
  static constexpr std::array<const char*, 4> kParts{"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"};
  return layer_prefix(layer) + "mlp.experts." + kParts[static_cast<std::size_t>(tensor)];
}

std::string attention_sinks(std::int64_t layer) { return layer_prefix(layer) + "self_attn.sinks"; }

std::string expert_weight(std::int64_t layer, std::int64_t expert, ExpertProjection projection, ExpertNames naming) {
  if (naming == ExpertNames::stacked) throw std::logic_error("expert_weight: stacked experts have no per-expert tensors");
  static constexpr std::array<const char*, 3> kQwen{"gate_proj", "up_proj", "down_proj"}, kMixtral{"w1", "w3", "w2"};
  const auto& parts = naming == ExpertNames::mlp_experts ? kQwen : kMixtral;
  return layer_prefix(layer) + expert_scope(naming) + "experts." + std::to_string(expert) + "." +
         parts[static_cast<std::size_t>(projection)] + ".weight";
}

std::string recipe_tensor(std::int64_t layer, const std::string& name) { return layer_prefix(layer) + "self_attn." + name; }

std::string qwen3_5_linear_attn(std::int64_t layer, const std::string& part) {
  return layer_prefix(layer) + "linear_attn." + part;
}

std::string granite_mamba(std::int64_t layer, const std::string& part) { return layer_prefix(layer) + "mamba." + part; }

std::string granite_shared_mlp(std::int64_t layer, const std::string& part) {
  return layer_prefix(layer) + "shared_mlp." + part;
}

std::string weight_of(const std::string& module_path) { return module_path + ".weight"; }

std::optional<ModulePath> parse_module_path(const std::string& path) {
  const auto split = split_layer_name(path, kLayerPrefix);
  for (std::size_t i = 0; split && i < kModules.size(); ++i)
    if (split->second == module_in_layer(static_cast<LayerModule>(i))) return ModulePath{split->first, static_cast<LayerModule>(i)};
  return std::nullopt;
}

std::optional<std::int64_t> layer_of(const std::string& tensor_name) {
  const auto split = split_layer_name(tensor_name, kLayerPrefix);
  if (!split) return std::nullopt;
  return split->first;
}

std::string capture(std::int64_t layer, Capture what) {
  return kCapturePrefix + std::to_string(layer) + "." + kCaptures[static_cast<std::size_t>(what)];
}

std::optional<LayerCapture> parse_capture(const std::string& name) {
  const auto split = split_layer_name(name, kCapturePrefix);
  for (std::size_t i = 0; split && i < kCaptures.size(); ++i)
    if (split->second == kCaptures[i]) return LayerCapture{split->first, static_cast<Capture>(i)};
  return std::nullopt;
}

std::string mixer_scope(std::int64_t layer) { return kCapturePrefix + std::to_string(layer) + ".mixer"; }

std::string capture(const std::string& scope, MixerCapture what) {
  return scope + "." + kMixerCaptures[static_cast<std::size_t>(what)];
}

bool is_capture(const std::string& name, MixerCapture what) {
  const std::string suffix = std::string(".") + kMixerCaptures[static_cast<std::size_t>(what)];
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace linearize::names
