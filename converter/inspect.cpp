#include "converter/inspect.h"

#include <cmath>
#include <map>
#include <sstream>

#include "formats/checkpoint.h"
#include "converter/model_config.h"
#include "converter/names.h"

namespace linearize {
namespace {

nlohmann::ordered_json rope_json(const RopeConfig& rope) {
  nlohmann::ordered_json j;
  j["type"] = rope_type_name(rope.type);
  j["theta"] = rope.theta;
  if (rope.partial_rotary_factor != 1.0) j["partial_rotary_factor"] = rope.partial_rotary_factor;
  if (rope.type != RopeType::Default && rope.factor > 0) j["factor"] = rope.factor;
  if (rope.low_freq_factor) j["low_freq_factor"] = *rope.low_freq_factor;
  if (rope.high_freq_factor) j["high_freq_factor"] = *rope.high_freq_factor;
  if (rope.original_max_position_embeddings) j["original_max_position_embeddings"] = *rope.original_max_position_embeddings;
  if (rope.attention_factor) j["attention_factor"] = *rope.attention_factor;
  if (rope.type == RopeType::LongRope) {
    j["short_factor"] = rope.short_factor;
    j["long_factor"] = rope.long_factor;
  }
  if (rope.type == RopeType::Yarn) {
    j["beta_fast"] = rope.beta_fast;
    j["beta_slow"] = rope.beta_slow;
  }
  return j;
}

nlohmann::ordered_json window_json(const ModelConfig& cfg) {
  nlohmann::ordered_json j;
  j["sliding_window"] = cfg.sliding_window ? nlohmann::ordered_json(*cfg.sliding_window) : nullptr;
  if (cfg.model_type == "qwen2") {
    j["use_sliding_window"] = cfg.use_sliding_window;
    j["max_window_layers"] = cfg.max_window_layers ? nlohmann::ordered_json(*cfg.max_window_layers) : nullptr;
  }
  std::vector<std::int64_t> sliding;
  for (std::size_t i = 0; i < cfg.layer_types.size(); ++i)
    if (cfg.layer_types[i] == AttentionKind::Sliding) sliding.push_back(static_cast<std::int64_t>(i));
  j["sliding_layers"] = sliding;
  return j;
}

}  // namespace

nlohmann::ordered_json inspect_checkpoint(const std::filesystem::path& dir) {
  const ModelConfig cfg = load_model_config(dir / "config.json");
  const CheckpointWeights weights = CheckpointWeights::open(dir);

  std::uint64_t parameters = 0, bytes = 0;
  std::map<std::string, std::uint64_t> params_by_dtype;
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const auto& shard : weights.shards()) {
    std::uint64_t shard_bytes = 0;
    for (const auto& t : shard.header().tensors) {
      parameters += t.numel();
      params_by_dtype[dtype_name(t.dtype)] += t.numel();
      shard_bytes += t.nbytes();
    }
    bytes += shard_bytes;
    shards.push_back({{"file", std::filesystem::path(shard.path()).filename().string()},
                      {"tensors", shard.header().tensors.size()},
                      {"bytes", shard_bytes}});
  }

  nlohmann::ordered_json r;
  r["directory"] = dir.string();
  r["architecture"] = cfg.architecture;
  r["model_type"] = cfg.model_type;
  r["family_config_keys"] = cfg.family->config_keys;
  r["parameters"] = parameters;
  r["config_dtype"] = cfg.dtype;
  r["tensor_dtypes"] = params_by_dtype;
  r["layers"] = cfg.num_hidden_layers;
  r["hidden_size"] = cfg.hidden_size;
  r["intermediate_size"] = cfg.intermediate_size;
  r["vocab_size"] = cfg.vocab_size;
  r["heads"] = cfg.num_attention_heads;
  r["kv_heads"] = cfg.num_key_value_heads;
  r["head_dim"] = cfg.head_dim;
  r["max_position_embeddings"] = cfg.max_position_embeddings;
  r["rms_norm_eps"] = cfg.rms_norm_eps;
  r["rope"] = rope_json(cfg.rope);
  if (cfg.sliding_rope) r["sliding_rope"] = rope_json(*cfg.sliding_rope);
  r["attention_window"] = window_json(cfg);
  const auto& b = cfg.block;
  const char* norm = b.norm == NormStyle::OnePlusWeight ? "rmsnorm (1+w)" : b.norm == NormStyle::WeightInFp32 ? "rmsnorm (w in fp32)" : "rmsnorm";
  const char* placement = b.norms == NormPlacement::Pre ? "pre" : b.norms == NormPlacement::Sandwich ? "sandwich" : "post";
  const char* qk_norm = b.qk_norm == QkNorm::None ? "none" : b.qk_norm == QkNorm::PerHead ? "per_head" : "full_width";
  nlohmann::ordered_json block{{"norm", norm},
                               {"norm_placement", placement},
                               {"qk_norm", qk_norm},
                               {"activation", cfg.hidden_act},
                               {"embedding_scale", b.embedding_scale},
                               {"attention_scale", b.attention_scale.value_or(1.0 / std::sqrt(double(cfg.head_dim)))},
                               {"residual_scale", b.residual_scale},
                               {"logits_divisor", b.logits_divisor}};
  if (b.final_logit_softcap) block["final_logit_softcap"] = *b.final_logit_softcap;
  if (b.attention_sinks) block["attention_sinks"] = true;
  if (!cfg.nope_layers.empty()) {
    std::vector<std::int64_t> nope;
    for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      if (cfg.is_nope(i)) nope.push_back(i);
    block["nope_layers"] = nope;
  }
  r["block"] = block;
  if (cfg.moe.experts > 0) {
    std::vector<std::int64_t> sparse;
    for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      if (cfg.is_sparse(i)) sparse.push_back(i);
    r["moe"] = {{"experts", cfg.moe.experts},
                {"top_k", cfg.moe.top_k},
                {"expert_intermediate_size", cfg.moe.intermediate_size},
                {"normalize_top_k", cfg.moe.normalize_top_k},
                {"sparse_layers", sparse},
                {"stacked_experts", b.expert_names == names::ExpertNames::stacked},
                {"router_bias", names::has_router_bias(b.expert_names)}};
    if (const auto& act = cfg.moe.expert_activation; act && act->kind == MlpActivation::ClampedSwiglu)
      r["moe"]["expert_activation"] = {{"clamped_swiglu_alpha", act->alpha}, {"clamped_swiglu_limit", act->limit}};
  }
  r["tie_word_embeddings"] = cfg.tie_word_embeddings;
  r["attention_bias"] = cfg.attention_bias;
  r["mlp_bias"] = cfg.mlp_bias;
  // What the weights hold, which is not always what the config says (Qwen2 hard-codes q/k/v biases).
  std::vector<std::string> biases;
  using names::LayerModule;
  for (const auto m : {LayerModule::q_proj, LayerModule::k_proj, LayerModule::v_proj, LayerModule::o_proj, LayerModule::gate_proj,
                       LayerModule::up_proj, LayerModule::down_proj})
    if (weights.contains(names::bias(0, m))) biases.push_back(names::module_in_layer(m));
  r["layer0_biases"] = biases;
  r["tensors"] = weights.names().size();
  r["bytes"] = bytes;
  r["sharded"] = weights.sharded();
  if (weights.declared_total_size()) r["index_total_size"] = *weights.declared_total_size();
  r["shards"] = shards;
  return r;
}

std::string format_inspection(const nlohmann::ordered_json& report) {
  std::ostringstream out;
  const auto line = [&](const std::string& key, const std::string& value) {
    out << key << ':' << std::string(key.size() < 24 ? 24 - key.size() : 1, ' ') << value << '\n';
  };
  const auto text = [](const nlohmann::ordered_json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  for (const auto& [key, value] : report.items()) {
    if (key == "shards") continue;
    if (value.is_object()) {
      std::string joined;
      for (const auto& [k, v] : value.items()) joined += (joined.empty() ? "" : ", ") + k + "=" + text(v);
      line(key, joined);
    } else {
      line(key, text(value));
    }
  }
  for (const auto& shard : report["shards"])
    line("shard", text(shard["file"]) + " (" + text(shard["tensors"]) + " tensors, " + text(shard["bytes"]) + " bytes)");
  return out.str();
}

}  // namespace linearize
