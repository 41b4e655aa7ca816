#include "converter/recipes/mixer_parts.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

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

NewTensor identity_conv(std::string name, std::int64_t channels, std::int64_t K) {
  auto init = [channels, K] {
    auto w = at::zeros({channels, K}, at::kFloat);
    w.select(1, K - 1).fill_(1.0);
    return w;
  };
  return {std::move(name), {channels, K}, init};
}

NewTensor gate_projection(const LayerContext& ctx, std::int64_t rows, std::uint64_t salt) {
  const std::int64_t hidden = ctx.config.hidden_size;
  const auto seed = static_cast<std::uint64_t>(ctx.layer) + salt;
  return {names::kGateWeight, {rows, hidden}, [rows, hidden, seed] {
            auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
            return at::normal(0.0, 0.02, {rows, hidden}, gen, at::TensorOptions().dtype(at::kFloat));
          }};
}

double softplus_inverse(double y) { return y + std::log(-std::expm1(-y)); }

}  // namespace linearize::recipes
