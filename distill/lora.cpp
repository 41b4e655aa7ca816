#include "distill/lora.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <stdexcept>

namespace linearize {

double lora_scale(const LoraOptions& options) {
  const double r = static_cast<double>(options.r);
  return options.rslora ? options.alpha / std::sqrt(r) : options.alpha / r;  // rsLoRA: Kalajdzievski 2023
}

LoraLinear::LoraLinear(std::string path, at::Tensor weight, at::Tensor bias, const LoraOptions& options,
                       std::optional<at::Generator> generator)
    : path_(std::move(path)), weight_(weight.detach()), bias_(bias.defined() ? bias.detach() : bias), options_(options),
      scale_(lora_scale(options)) {
  if (weight_.dim() != 2) throw std::invalid_argument("LoraLinear: " + path_ + ": weight must be [out, in]");
  if (options.r < 1) throw std::invalid_argument("LoraLinear: " + path_ + ": r must be >= 1");
  const auto fp32 = weight_.options().dtype(at::kFloat);
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight_.size(1)));  // kaiming_uniform_(a=sqrt(5))
  a_ = at::empty({options.r, weight_.size(1)}, fp32).uniform_(-bound, bound, generator).requires_grad_(true);
  b_ = at::zeros({weight_.size(0), options.r}, fp32).requires_grad_(true);
}

at::Tensor LoraLinear::forward(const at::Tensor& x, bool training) const {
  const at::Tensor base = at::linear(x, weight_, bias_);
  at::Tensor lora_in = x.to(a_.scalar_type());
  // p = 0 is PEFT's nn.Identity: no dropout call, so no random numbers are drawn.
  if (training && options_.dropout > 0) lora_in = at::dropout(lora_in, options_.dropout, true);
  const at::Tensor delta = at::linear(at::linear(lora_in, a_), b_) * scale_;
  return base + delta.to(base.scalar_type());
}

at::Tensor LoraLinear::merge() const {
  at::NoGradGuard no_grad;
  // Same order as PEFT's get_delta_weight: (B @ A) * scaling, then added to the weight.
  at::Tensor merged = weight_.to(at::kFloat) + at::matmul(b_.to(at::kFloat), a_.to(at::kFloat)) * scale_;
  const std::int64_t bad = merged.numel() - at::isfinite(merged).sum().item<std::int64_t>();
  if (bad != 0) {
    throw std::runtime_error(path_ + ".weight: merging LoRA gives " + std::to_string(bad) +
                             " non-finite values (NaN/Inf); not merged (check " + a_name() + " and " + b_name() + ")");
  }
  return merged;
}

}  // namespace linearize
