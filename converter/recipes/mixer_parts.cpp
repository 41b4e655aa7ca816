#include "converter/recipes/mixer_parts.h"

#include "kernels/feature_maps.h"

namespace linearize::recipes {

NewTensor filled(std::string name, std::vector<std::int64_t> shape, double value) {
  auto init = [shape, value] { return at::full(shape, value, at::kFloat); };
  return {std::move(name), std::move(shape), init};
}

std::int64_t hedgehog_feature_dim(std::int64_t head_dim, const RecipeParams& params) {
  const auto& f = params.at("feature_dim");
  return f.is_null() ? head_dim / 2 : f.get<std::int64_t>();
}

std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx) {
  const std::int64_t heads = ctx.config.num_attention_heads, d = ctx.config.head_dim;
  const std::int64_t f = hedgehog_feature_dim(d, ctx.params);
  auto init = [heads, d, f] { return kernels::truncated_identity(heads, d, f, at::TensorOptions().dtype(at::kFloat)); };
  return {{names::kFeatureMapQWeight, {heads, d, f}, init}, {names::kFeatureMapKWeight, {heads, d, f}, init}};
}

}  // namespace linearize::recipes
