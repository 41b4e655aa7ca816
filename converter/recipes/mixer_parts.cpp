#include "converter/recipes/mixer_parts.h"

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

std::vector<NewTensor> hedgehog_map_tensors(const LayerContext& ctx) {
  const std::int64_t heads = ctx.config.num_attention_heads, d = ctx.config.head_dim;
  const auto& f_param = ctx.params.at("feature_dim");
  const std::int64_t f = f_param.is_null() ? d / 2 : f_param.get<std::int64_t>();
  auto init = [heads, d, f] { return kernels::truncated_identity(heads, d, f, at::TensorOptions().dtype(at::kFloat)); };
  return {{"feature_map_q.weight", {heads, d, f}, init}, {"feature_map_k.weight", {heads, d, f}, init}};
}

kernels::MixerForm form_for(const MixerCall& call, std::int64_t tokens, const MixerState* state) {
  return state && tokens == 1 ? kernels::MixerForm::recurrent : call.form;
}

}  // namespace linearize::recipes
