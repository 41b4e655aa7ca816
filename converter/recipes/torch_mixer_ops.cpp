#include "converter/recipes/torch_mixer_ops.h"

#include "kernels/delta_rule.h"
#include "kernels/feature_maps.h"
#include "kernels/rope.h"
#include "kernels/short_conv.h"
#include "kernels/softmax_attention.h"

namespace linearize::recipes {

at::Tensor at_least_fp32(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat); }

at::Tensor repeat_heads(const at::Tensor& x, std::int64_t heads) {
  const auto groups = heads / x.size(2);
  return groups == 1 ? x : x.repeat_interleave(groups, 2);
}

at::Tensor pairwise(const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a.transpose(1, 2), b.transpose(1, 2).transpose(-1, -2));
}

std::int64_t RecipeMixerState::bytes() const {
  return (linear.empty() ? 0 : linear.bytes()) + (conv.defined() ? static_cast<std::int64_t>(conv.nbytes()) : 0) +
         hybrid.bytes();
}

ProgramLayer::ProgramLayer(const SoftmaxAttentionMixer& source, LayerTensors tensors, std::vector<std::string> order,
                           RecipeParams params)
    : source_(source), tensors_(std::move(tensors)), order_(std::move(order)), params_(std::move(params)) {}

std::vector<std::pair<std::string, at::Tensor>> ProgramLayer::trainable() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& name : order_) out.emplace_back(name, tensors_.at(name));
  return out;
}

const at::Tensor& ProgramLayer::constant(const std::vector<double>& values) const {
  const std::lock_guard<std::mutex> lock(constants_->mutex);
  auto& slot = constants_->values[values];
  if (!slot.defined()) slot = at::tensor(values, at::kFloat).to(source_.projections().q.device());
  return slot;
}

TorchMixerOps::TorchMixerOps(const ProgramLayer& layer, const at::Tensor& x, std::int64_t start, RecipeMixerState* state,
                             const MixerCall* call)
    : layer_(layer), x_(x), start_(start), state_(state), call_(call), compute_(at_least_fp32(x).scalar_type()) {}

kernels::MixerForm TorchMixerOps::form() const {
  if (state_ && x_.size(1) == 1) return kernels::MixerForm::recurrent;
  return call_ ? call_->form : kernels::MixerForm::chunked;
}

Heads<at::Tensor> TorchMixerOps::project_heads(const at::Tensor& x) const {
  auto h = source().project_heads(x);
  return {std::move(h.q), std::move(h.k), std::move(h.v)};
}

Heads<at::Tensor> TorchMixerOps::project_weights(const at::Tensor& x) const {
  auto h = source().project_weights(x);
  return {std::move(h.q), std::move(h.k), std::move(h.v)};
}

at::Tensor TorchMixerOps::rope(const at::Tensor& heads) {
  if (!cos_sin_) cos_sin_ = call_ ? source().cos_sin(*call_, start_, x_) : source().cos_sin(start_, x_.size(1), x_);
  return kernels::apply_rope(heads.transpose(1, 2), *cos_sin_).transpose(1, 2);
}

at::Tensor TorchMixerOps::zero_padded(const at::Tensor& v) const {
  TORCH_CHECK(!token_mask().defined() || state_ == nullptr, "a padded batch runs stateless");
  return kernels::zero_padded_tokens(v, token_mask());
}

at::Tensor TorchMixerOps::linear(const at::Tensor& v, const std::string& weight, const std::string& bias) const {
  const auto as_v = [&](const std::string& name) { return layer_.tensor(name).to(v.scalar_type()); };
  return bias.empty() ? at::linear(v, as_v(weight)) : at::linear(v, as_v(weight), as_v(bias));
}

at::Tensor TorchMixerOps::per_head(const at::Tensor& x, const std::string& weight, const std::string& bias) const {
  return linear(x, weight, bias).unsqueeze(-1);
}

at::Tensor TorchMixerOps::param(const std::string& name) const { return layer_.tensor(name).to(compute_); }

at::Tensor TorchMixerOps::head_param(const std::string& name) const { return param(name).view({1, 1, -1, 1}); }

at::Tensor TorchMixerOps::hedgehog(const at::Tensor& heads, const std::string& weight) const {
  return kernels::hedgehog(heads, layer_.tensor(weight).to(heads.scalar_type()));
}

at::Tensor TorchMixerOps::softmax_d(const at::Tensor& v) { return kernels::softmax_d(v); }

at::Tensor TorchMixerOps::l2_normalize(const at::Tensor& v, double eps) {
  return v * at::rsqrt(v.pow(2).sum(-1, /*keepdim=*/true) + eps);
}

at::Tensor TorchMixerOps::rms_normalize(const at::Tensor& v, double eps) {
  return v * at::rsqrt(v.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

at::Tensor TorchMixerOps::layer_normalize(const at::Tensor& v, double eps) {
  const auto mean = v.mean(-1, /*keepdim=*/true), var = (v - mean).pow(2).mean(-1, /*keepdim=*/true);
  return (v - mean) * at::rsqrt(var + eps);
}

at::Tensor TorchMixerOps::linear_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& decay, const Recurrence& r) {
  kernels::LinearAttentionInputs in;
  in.q = q;
  in.k = zero_padded(k);  // a padded token writes nothing, nor into the normaliser's key sum
  in.v = v;
  switch (r.decay) {
    case Decay::per_head: in.log_decay = decay.squeeze(-1); break;
    case Decay::per_channel: in.log_decay = decay; break;
    case Decay::fixed: in.log_gamma = layer_.constant(r.fixed_log_decay); break;
    case Decay::none: break;
  }
  kernels::LinearAttentionOptions options;
  options.form = form();
  options.scale = r.scale;
  options.normalize = r.normalize;
  auto out = kernels::linear_attention(in, state_ ? std::move(state_->linear) : kernels::LinearState{}, options);
  if (state_) state_->linear = std::move(out.state);
  return std::move(out.o);
}

at::Tensor TorchMixerOps::delta_rule(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                                     const at::Tensor& decay, const Recurrence& r) {
  kernels::DeltaRuleInputs in;
  in.q = q;
  in.k = k;
  in.v = v;
  in.beta = zero_padded(beta.squeeze(-1));  // a padded token writes nothing
  in.log_decay = decay.squeeze(-1);
  kernels::LinearAttentionOptions options;
  options.form = form();
  options.scale = r.scale;
  auto out = kernels::delta_rule(in, state_ ? state_->linear : kernels::LinearState{}, options);
  if (state_) state_->linear = std::move(out.state);
  return std::move(out.o);
}

std::vector<at::Tensor> TorchMixerOps::short_conv(const std::vector<HeadsOf<at::Tensor>>& heads, const std::string& weight,
                                                  const std::string& bias) {
  const std::int64_t B = x_.size(0), T = x_.size(1);
  std::vector<at::Tensor> flat;
  for (const auto& h : heads) flat.push_back(h.heads.reshape({B, T, -1}));
  // A padded token's inputs are 0, as the positions before a first token are.
  auto conv = kernels::short_conv(zero_padded(at_least_fp32(at::cat(flat, -1))), layer_.tensor(weight),
                                  bias.empty() ? at::Tensor() : layer_.tensor(bias), state_ ? state_->conv : at::Tensor());
  if (state_) state_->conv = std::move(conv.state);
  std::vector<at::Tensor> out;
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < heads.size(); ++i) {
    const auto width = flat[i].size(-1);
    out.push_back(conv.y.narrow(-1, offset, width).view({B, T, heads[i].count, -1}));
    offset += width;
  }
  return out;
}

at::Tensor TorchMixerOps::liger_hybrid(const LigerParts<at::Tensor>& p, std::int64_t window) {
  const kernels::LigerAttentionInputs in{p.q, p.k, p.v, p.phi_q, p.phi_k, p.log_decay};
  return hybrid(kernels::liger_attention, kernels::liger_decode_step, in, window);
}

void TorchMixerOps::capture(names::MixerCapture what, const at::Tensor& v) const {
  if (call_ && call_->capture) call_->capture(names::capture(call_->scope, what), v);
}

at::Tensor TorchMixerOps::project_output(const at::Tensor& heads) const {
  return source().project_output(heads.to(x_.scalar_type()));
}

}  // namespace linearize::recipes
