#include "converter/layer_selection.h"

#include <algorithm>
#include <stdexcept>

#include "converter/next_token.h"
#include "converter/recipes/recipe.h"
#include "converter/verify.h"
#include "formats/error.h"

namespace linearize {

std::vector<LayerSensitivity> rank_layers(const LayerSelectionOptions& options) {
  const auto config = load_model_config(options.source / "config.json");
  const auto& recipe = find_recipe(options.recipe, options.params_origin, "recipe");
  auto given = options.params;
  given.erase("softmax_layers");
  const auto params = resolve_recipe_params(recipe, given, config, options.params_origin);
  if (recipe.check_source) recipe.check_source(config);

  auto model = CausalLM::load(options.source, options.load);
  const auto prompts = (options.text ? text_file_prompts(options.source, *options.text)
                                     : builtin_verify_prompts(options.source, config)).ids;
  std::vector<at::Tensor> batches, reference;
  for (const auto& p : prompts) {
    batches.push_back(at::tensor(p, at::kLong).view({1, -1}).to(options.load.device));
    reference.push_back(at::log_softmax(model.forward(batches.back())[0].to(at::kDouble), -1));
  }

  std::vector<LayerSensitivity> ranking;
  for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
    auto& layer = model.layers()[static_cast<std::size_t>(i)];
    const auto* source = dynamic_cast<const SoftmaxAttentionMixer*>(layer.mixer.get());
    if (!source) throw std::logic_error("rank_layers: layer " + std::to_string(i) + " of the source is not softmax attention");
    const LayerContext ctx{config, i, params};
    LayerTensors tensors;  // the recipe's initial tensors, as convert writes them and loading converts them
    for (const auto& t : recipe.new_tensors(ctx))
      tensors[t.name] = t.init().to(options.load.device, options.load.dtype);
    auto converted = recipe.make_mixer(ctx, *source, tensors);
    std::swap(layer.mixer, converted);  // `converted` holds the source mixer now, which the recipe's copied
    double kl_sum = 0, positions = 0;
    for (std::size_t n = 0; n < batches.size(); ++n) {
      const auto log_q = at::log_softmax(model.forward(batches[n])[0].to(at::kDouble), -1);
      kl_sum += kl_per_row(reference[n], log_q).sum().item<double>();
      positions += static_cast<double>(log_q.size(0));
    }
    std::swap(layer.mixer, converted);
    ranking.push_back({i, kl_sum / positions});
    if (options.progress) options.progress(ranking.back(), config.num_hidden_layers);
  }
  std::stable_sort(ranking.begin(), ranking.end(),
                   [](const LayerSensitivity& a, const LayerSensitivity& b) { return a.mean_kl > b.mean_kl; });
  return ranking;
}

std::vector<std::int64_t> most_sensitive(const std::vector<LayerSensitivity>& ranking, std::int64_t keep) {
  std::vector<std::int64_t> layers;
  for (std::int64_t i = 0; i < keep && i < static_cast<std::int64_t>(ranking.size()); ++i)
    layers.push_back(ranking[static_cast<std::size_t>(i)].layer);
  std::sort(layers.begin(), layers.end());
  return layers;
}

std::optional<std::int64_t> auto_softmax_layers(const nlohmann::json& value, const ModelConfig& config,
                                                const std::string& file) {
  static const std::string prefix = "auto:";
  if (!value.is_string()) return std::nullopt;
  const auto text = value.get<std::string>();
  const auto fail = [&] {
    throw InputError(file, "softmax_layers",
                     "'" + text + "' is neither a list of layers nor auto:N with 0 <= N <= " +
                         std::to_string(config.num_hidden_layers) +
                         " (the N layers select-layers ranks highest) nor auto:P% with 0 <= P <= 100");
  };
  if (text.rfind(prefix, 0) != 0) fail();
  auto digits = text.substr(prefix.size());
  // auto:P% keeps P % of the layers, rounded to the nearest layer (halves up): one run file fits any depth.
  const bool percent = !digits.empty() && digits.back() == '%';
  if (percent) digits.pop_back();
  if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    fail();
  const auto n = std::stoll(digits);
  if (percent) {
    if (n > 100) fail();
    return (n * config.num_hidden_layers + 50) / 100;
  }
  if (n > config.num_hidden_layers) fail();
  return n;
}

}  // namespace linearize
