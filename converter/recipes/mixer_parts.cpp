#include "converter/recipes/mixer_parts.h"

#include <cmath>

#include "formats/error.h"
#include "kernels/feature_maps.h"

namespace linearize::recipes {

at::Tensor at_least_fp32(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat);
}

at::Tensor rope_bthd(const at::Tensor& x, const kernels::RopeCosSin& cs) {
  return kernels::apply_rope(x.transpose(1, 2), cs).transpose(1, 2);
}

at::Tensor repeat_heads(const at::Tensor& x, std::int64_t heads) {
  const auto groups = heads / x.size(2);
  return groups == 1 ? x : x.repeat_interleave(groups, 2);
}

at::Tensor pairwise(const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a.transpose(1, 2), b.transpose(1, 2).transpose(-1, -2));
}

NewTensor filled(std::string name, std::vector<std::int64_t> shape, double value) {
  auto init = [shape, value] { return at::full(shape, value, at::kFloat); };
  return {std::move(name), std::move(shape), init};
}

std::int64_t hedgehog_feature_dim(const ModelConfig& config, const RecipeParams& params) {
  const auto& f = params.at("feature_dim");
  return f.is_null() ? config.head_dim / 2 : f.get<std::int64_t>();
}

std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx) {
  const std::int64_t heads = ctx.config.num_attention_heads, d = ctx.config.head_dim;
  const std::int64_t f = hedgehog_feature_dim(ctx.config, ctx.params);
  auto init = [heads, d, f] { return kernels::truncated_identity(heads, d, f, at::TensorOptions().dtype(at::kFloat)); };
  return {{names::kFeatureMapQWeight, {heads, d, f}, init}, {names::kFeatureMapKWeight, {heads, d, f}, init}};
}

void require_default_attention_scale(const ModelConfig& config) {
  if (!config.block.attention_scale) return;
  const double standard = 1.0 / std::sqrt(static_cast<double>(config.head_dim));
  if (std::abs(*config.block.attention_scale - standard) > 1e-12 * standard)
    throw InputError(config.source, "query_pre_attn_scalar",
                     "is not head_dim, and the window branch of this recipe scores q.k / sqrt(head_dim); "
                     "convert with hedgehog or supra");
}

kernels::MixerForm form_for(const MixerCall& call, std::int64_t tokens, const MixerState* state) {
  return state && tokens == 1 ? kernels::MixerForm::recurrent : call.form;
}

}  // namespace linearize::recipes
