#include "converter/linearized.h"

#include <algorithm>
#include <fstream>
#include <future>
#include <stdexcept>

#include "converter/hf_files.h"
#include "converter/layer_selection.h"
#include "converter/model/lora.h"
#include "converter/model/softmax_attention_mixer.h"
#include "converter/model/weights.h"
#include "converter/names.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"

#ifndef LINEARIZE_VERSION
#define LINEARIZE_VERSION "dev"
#endif

namespace linearize {
namespace {

bool is_softmax_layer(const RecipeParams& params, std::int64_t layer) {
  const auto kept = softmax_layers(params);
  return std::find(kept.begin(), kept.end(), layer) != kept.end();
}

std::vector<TensorSpec> recipe_tensors(const ModelConfig& config, const RecipeOfModel& r) {
  std::vector<TensorSpec> specs;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    if (is_softmax_layer(r.params, i)) continue;
    for (auto& t : r.recipe->new_tensors(LayerContext{config, i, r.params}))
      specs.push_back({names::recipe_tensor(i, t.name), t.shape, false});
  }
  return specs;
}

}  // namespace

RecipeOfModel recipe_of(const ModelConfig& config) {
  const JsonObject lin(config.linearize, config.source, "linearize.");
  const auto& recipe = find_recipe(lin.get_string("recipe"), config.source, "linearize.recipe");
  const nlohmann::json given = config.linearize.contains("params") ? config.linearize["params"] : nlohmann::json::object();
  return {&recipe, resolve_recipe_params(recipe, given, config, config.source)};
}

const std::vector<std::string>& passthrough_files() {
  static const std::vector<std::string> files{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                              "generation_config.json", "chat_template.jinja"};
  return files;
}

void copy_passthrough_files(const std::filesystem::path& from, const std::filesystem::path& to) {
  for (const auto& name : passthrough_files()) {
    if (!std::filesystem::exists(from / name)) continue;
    std::ifstream in(from / name, std::ios::binary);
    write_file_atomic(to / name, std::string(std::istreambuf_iterator<char>(in), {}));
  }
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& config) {
  auto specs = decoder_tensors(*config.family, config);
  if (!config.linearize.is_null()) {
    const auto extra = recipe_tensors(config, recipe_of(config));
    specs.insert(specs.end(), extra.begin(), extra.end());
  }
  return specs;
}

namespace {

CausalLM load_mixers(const std::filesystem::path& dir, const LoadOptions& options) {
  auto config = load_model_config(dir / "config.json");
  if (config.linearize.is_null()) return CausalLM::load(dir, std::move(config), options, nullptr);

  const auto of = recipe_of(config);
  MixerOverrides overrides;
  overrides.extra_tensors = recipe_tensors(config, of);
  // The factory runs inside CausalLM::load, and for a streamed model whenever a layer is copied in: it keeps its
  // own copies of the config and the parameters (the recipe is a registry entry).
  overrides.make = [of, cfg = config](std::int64_t layer, const SoftmaxAttentionMixer& source,
                                      const ModelWeights& weights) -> std::unique_ptr<TokenMixer> {
    if (is_softmax_layer(of.params, layer)) return nullptr;
    const LayerContext ctx{cfg, layer, of.params};
    LayerTensors tensors;
    for (const auto& t : of.recipe->new_tensors(ctx)) tensors[t.name] = weights.get(names::recipe_tensor(layer, t.name));
    return of.recipe->make_mixer(ctx, source, tensors);
  };
  return CausalLM::load(dir, std::move(config), options, &overrides);
}

}  // namespace

std::vector<std::int64_t> converted_layers(const ModelConfig& config) {
  if (config.linearize.is_null()) return {};
  const auto params = recipe_of(config).params;
  std::vector<std::int64_t> layers;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i)
    if (!is_softmax_layer(params, i)) layers.push_back(i);
  return layers;
}

std::unique_ptr<TokenMixer> rebuild_mixer(const CausalLM& model, std::int64_t layer, at::ScalarType dtype) {
  const auto& config = model.config();
  if (config.linearize.is_null()) return nullptr;
  const auto of = recipe_of(config);
  if (is_softmax_layer(of.params, layer)) return nullptr;
  const auto& decoder_layer = model.layer(layer);
  const auto cast = [dtype](const at::Tensor& t) { return t.defined() ? t.detach().to(dtype) : t; };
  const auto& a = decoder_layer.attention;
  const SoftmaxAttentionMixer source({cast(a.q), cast(a.k), cast(a.v), cast(a.o), cast(a.q_bias), cast(a.k_bias),
                                      cast(a.v_bias), cast(a.o_bias), cast(a.q_norm), cast(a.k_norm), cast(a.sinks)},
                                     attention_shape(config, layer), config.rope_for(layer), decoder_layer.adapters);
  const LayerContext ctx{config, layer, of.params};
  const auto held = decoder_layer.mixer->trainable();
  LayerTensors tensors;
  for (const auto& t : of.recipe->new_tensors(ctx)) {
    const auto it = std::find_if(held.begin(), held.end(), [&t](const auto& h) { return h.first == t.name; });
    if (it == held.end()) throw std::logic_error("rebuild_mixer: the " + of.recipe->name + " mixer does not hold " + t.name);
    tensors[t.name] = cast(it->second);
  }
  return of.recipe->make_mixer(ctx, source, tensors);
}

CausalLM load_model(const std::filesystem::path& dir, const LoadOptions& options) {
  const auto adapter = dir / kPeftAdapterDir / kPeftConfigFile;
  // Attaching adapts every layer at once; a streamed model copies its layers in one at a time.
  if (options.stream_layers && std::filesystem::exists(adapter))
    throw InputError(adapter.string(), "stream_layers", "a PEFT adapter is attached to resident layers only: load this model without --stream-layers");
  CausalLM model = load_mixers(dir, options);
  if (std::filesystem::exists(adapter)) attach_peft_adapter(model, dir / kPeftAdapterDir);
  return model;
}

namespace {

// The recipe and its resolved parameters for this source; softmax_layers "auto:N" ranks the layers first
// (recorded as linearize.layer_selection, `selection`).
RecipeParams resolve_conversion(const ConvertOptions& options, const Recipe& recipe, const ModelConfig& config,
                                nlohmann::ordered_json& selection) {
  auto given = options.params;
  if (given.contains("softmax_layers"))
    if (const auto keep = auto_softmax_layers(given["softmax_layers"], config, options.params_origin)) {
      LayerSelectionOptions select;
      select.source = options.source;
      select.recipe = recipe.name;
      select.params = given;
      select.params_origin = options.params_origin;
      const auto ranking = rank_layers(select);
      given["softmax_layers"] = most_sensitive(ranking, *keep);
      selection = {{"keep", *keep}, {"ranking", nlohmann::ordered_json::array()}};
      for (const auto& r : ranking) selection["ranking"].push_back({{"layer", r.layer}, {"mean_kl", r.mean_kl}});
    }
  return resolve_recipe_params(recipe, given, config, options.params_origin);
}

// Writes the weights: every source tensor copied from its mapping in its dtype, then the recipe's new tensors.
// The copies stream one tensor resident at a time: each tensor's pages are released once hashed and again once
// written (mapped pages count in the process's RSS until dropped), so peak memory is the largest tensor plus
// the recipe's new ones. The copies' sha256 go into the metadata, for verify's L0.
void write_weights(const ConvertOptions& options, const CheckpointWeights& source, const Recipe& recipe,
                                     const ModelConfig& config, ConvertResult& result) {
  NamedTensors tensors;
  nlohmann::ordered_json copied;
  for (const auto& shard : source.shards()) {
    for (const auto& name : shard.names()) {  // the source's own order, which sharding follows
      auto view = shard.tensor(name);  // a view of the mapping: no copy
      copied[name] = sha256_hex(view.data_ptr(), view.nbytes());
      shard.release(name);
      tensors.emplace_back(name, std::move(view));
    }
  }
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    if (is_softmax_layer(result.params, i)) continue;
    ++result.converted_layers;
    const auto source_tensor = [&source](const std::string& name) { return source.contains(name) ? source.tensor(name) : at::Tensor(); };
    for (const auto& t : recipe.new_tensors(LayerContext{config, i, result.params, source_tensor})) {
      auto value = t.init();
      result.new_parameters += value.numel();
      tensors.emplace_back(names::recipe_tensor(i, t.name), std::move(value));
    }
  }
  std::uint64_t written = 0, total = 0;
  for (const auto& [name, tensor] : tensors) total += static_cast<std::uint64_t>(tensor.nbytes());
  write_checkpoint(options.out, tensors,
                   {{"format", "pt"}, {"linearize_format_version", std::to_string(kLinearizeFormatVersion)},
                    {"recipe", recipe.name}, {kCopiedTensorsMetadataKey, copied.dump()}},
                   options.max_shard_bytes, [&](const std::string& name, std::uint64_t bytes) {
                     if (source.contains(name)) source.release(name);
                     written += bytes;
                     if (options.progress) options.progress(written, total);
                   });
}

// The tokenizer files as they are, and the transformers files with their sha256 (for config.json).
nlohmann::ordered_json write_side_files(const ConvertOptions& options) {
  copy_passthrough_files(options.source, options.out);
  nlohmann::ordered_json hf_hashes;
  for (const auto& file : hf_files()) {
    write_file_atomic(options.out / file.name, std::string(file.text));
    hf_hashes[std::string(file.name)] = sha256_hex(file.text.data(), file.text.size());
  }
  return hf_hashes;
}

// config.json: the source's keys with the export's architecture, auto_map and `linearize` object (docs/formats.md).
nlohmann::ordered_json export_config(const ConvertOptions& options, const Recipe& recipe, const ModelConfig& config,
                                     const ConvertResult& result, const nlohmann::ordered_json& source_files,
                                     const nlohmann::ordered_json& hf_hashes, const nlohmann::ordered_json& selection) {
  auto doc = nlohmann::ordered_json::parse(std::ifstream(options.source / "config.json"));
  doc["architectures"] = {linearized_architecture_name(recipe.name)};
  doc["model_type"] = kExportModelType;
  doc["auto_map"] = {{"AutoConfig", "configuration_linearize.LinearizeConfig"},
                     {"AutoModelForCausalLM", "modeling_linearize.LinearizeForCausalLM"}};
  doc["linearize"] = {{"format_version", kLinearizeFormatVersion},
                      {"tool_version", LINEARIZE_VERSION},
                      {"recipe", recipe.name},
                      {"params", result.params},
                      {"softmax_layers", result.params["softmax_layers"]},
                      {"source",
                       {{"architecture", config.architecture},
                        {"model_type", config.model_type},
                        {"path", options.source.string()},
                        {"sha256", source_files}}},
                      {kHfFilesKey, hf_hashes}};
  if (!selection.is_null()) doc["linearize"]["layer_selection"] = selection;
  if (recipe.describe) doc["linearize"]["program"] = recipe.describe(config, result.params);
  return doc;
}

}  // namespace

ConvertResult convert_checkpoint(const ConvertOptions& options) {
  const auto& out = options.out;
  if (std::filesystem::exists(out) && !options.force)
    throw InputError(out.string(), "--out", "exists (pass --force to overwrite it)");
  const auto config = load_model_config(options.source / "config.json");
  if (!config.linearize.is_null())
    throw InputError(config.source, "linearize", "is already a converted model; convert its source instead");
  // Dynamic NTK RoPE rescales every rotation angle by the sequence's total length once it passes
  // max_position_embeddings: a recurrent state (and a window cache of keys rotated earlier) holds keys
  // rotated at the lengths seen so far, so prefill and decode would compute different functions
  // (transformers' own cached decode differs from its prefill there too). Every other RoPE type the
  // families use (default, linear, llama3, yarn) rotates position t the same way whatever the length.
  // LongRoPE switches every rotation to its long factors once the sequence passes original_max_position_embeddings:
  // the same problem.
  for (const auto* rope : {&config.rope, config.sliding_rope ? &*config.sliding_rope : nullptr})
    if (rope && kernels::rope_depends_on_length(*rope))
      throw InputError(config.source, "rope_scaling.rope_type",
                       std::string("'") + rope_type_name(rope->type) +
                           "' rescales RoPE by the total sequence length, which a recurrent state cannot follow; convert a copy "
                           "whose config uses a fixed scaling (default, linear, llama3, yarn, or longrope with long_factor = short_factor)");
  const auto& recipe = find_recipe(options.recipe, "command line", "--recipe");
  if (recipe.check_source) recipe.check_source(config);
  ConvertResult result;
  nlohmann::ordered_json selection;
  result.params = resolve_conversion(options, recipe, config, selection);

  // Checks the source as loading would (every tensor, every shape) before anything is written.
  const auto source = CheckpointWeights::open(options.source);
  check_tensors(source, decoder_tensors(*config.family, config));

  std::filesystem::create_directories(out);
  // A forced rewrite makes the directory incomplete first: config.json goes last.
  std::filesystem::remove(out / "config.json");
  // The source files' own hashes (recorded in config.json) on another thread while this one hashes and
  // writes the tensors: reading through the page cache, they hold no memory of the process's.
  auto shard_hashes = std::async(std::launch::async, [&source] {
    std::vector<std::string> hashes;
    for (const auto& shard : source.shards()) hashes.push_back(sha256_file(shard.path()));
    return hashes;
  });
  write_weights(options, source, recipe, config, result);
  const auto hf_hashes = write_side_files(options);

  nlohmann::ordered_json files;
  const auto hashes = shard_hashes.get();
  for (std::size_t i = 0; i < source.shards().size(); ++i)
    files[std::filesystem::path(source.shards()[i].path()).filename().string()] = hashes[i];
  files["config.json"] = sha256_file(options.source / "config.json");
  write_file_atomic(out / "config.json", export_config(options, recipe, config, result, files, hf_hashes, selection).dump(2) + "\n");
  return result;
}

}  // namespace linearize
