#include "converter/model/lora.h"

#include "converter/model/causal_lm.h"
#include "formats/error.h"
#include "kernels/linear.h"

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
  // Drawn on the CPU (a CPU generator serves any device), then moved to the weight's device.
  a_ = at::empty({options.r, weight_.size(1)}, at::kFloat).uniform_(-bound, bound, generator).to(fp32).requires_grad_(true);
  b_ = at::zeros({weight_.size(0), options.r}, fp32).requires_grad_(true);
}

LoraLinear::LoraLinear(std::string path, at::Tensor weight, at::Tensor bias, const LoraOptions& options,
                       const at::Tensor& a, const at::Tensor& b)
    : path_(std::move(path)), weight_(weight.detach()), bias_(bias.defined() ? bias.detach() : bias), options_(options),
      scale_(lora_scale(options)) {
  const auto fp32 = weight_.options().dtype(at::kFloat);
  a_ = a.detach().to(fp32, /*non_blocking=*/false, /*copy=*/true);
  b_ = b.detach().to(fp32, /*non_blocking=*/false, /*copy=*/true);
}

at::Tensor LoraLinear::lora_path(const at::Tensor& x, bool training) const {
  // fp32, or fp64 for fp64 inputs (verify's per-layer L1 runs a layer in fp64).
  const auto dtype = at::promote_types(x.scalar_type(), a_.scalar_type());
  at::Tensor lora_in = x.to(dtype);
  // p = 0 is PEFT's nn.Identity: no dropout call, so no random numbers are drawn.
  if (training && options_.dropout > 0) lora_in = at::dropout(lora_in, options_.dropout, true);
  return at::linear(at::linear(lora_in, a_.to(dtype)), b_.to(dtype)) * scale_;
}

at::Tensor LoraLinear::forward(const at::Tensor& x, bool training) const {
  const at::Tensor base = kernels::linear_projection(x, weight_, bias_);
  return base + lora_path(x, training).to(base.scalar_type());
}

at::Tensor LoraLinear::merge() const {
  at::NoGradGuard no_grad;
  // Same order as PEFT's get_delta_weight: (B @ A) * scaling, then added to the weight.
  at::Tensor merged = weight_.to(at::kFloat) + at::matmul(b_.to(at::kFloat), a_.to(at::kFloat)) * scale_;
  const std::int64_t bad = merged.numel() - at::isfinite(merged).sum().item<std::int64_t>();
  if (bad != 0) {
    throw std::runtime_error(names::weight_of(path_) + ": merging LoRA gives " + std::to_string(bad) +
                             " non-finite values (NaN/Inf); not merged (check " + a_name() + " and " + b_name() + ")");
  }
  return merged;
}

std::vector<std::shared_ptr<LoraLinear>> attach_lora(CausalLM& model, const std::vector<std::string>& targets,
                                                     const LoraOptions& options, std::optional<at::Generator> generator) {
  std::vector<std::shared_ptr<LoraLinear>> adapters;
  for (std::size_t i = 0; i < model.layers().size(); ++i) {
    auto& layer = model.layers()[i];
    for (const auto& target : targets) {
      const auto projection = find_projection(target);
      if (!projection) throw std::invalid_argument("attach_lora: unknown projection " + target);
      if (model.config().block.fused_projections && *projection != Projection::o && *projection != Projection::down)
        throw std::invalid_argument("lora.targets: " + target + " is a row block of Phi-3's fused qkv_proj / gate_up_proj, which "
                                    "PEFT adapts as one module; target o_proj or down_proj");
      if (!layer.weight(*projection).defined())  // a routed MoE layer: its experts stay frozen
        throw std::invalid_argument("lora.targets: " + target + ": layer " + std::to_string(i) +
                                    "'s MLP is routed experts, which are not adapted (target the attention)");
      auto lora = std::make_shared<LoraLinear>(names::module_path(static_cast<std::int64_t>(i), layer_module(*projection)), layer.weight(*projection),
                                               layer.bias(*projection), options, generator);
      layer.adapters->attach(*projection, lora);
      adapters.push_back(std::move(lora));
    }
  }
  return adapters;
}

std::vector<std::shared_ptr<LoraLinear>> attach_peft_adapter(CausalLM& model, const std::filesystem::path& dir) {
  const auto adapter = read_peft_adapter(dir);
  const LoraOptions options{adapter.config.r, adapter.config.lora_alpha, adapter.config.lora_dropout, adapter.config.use_rslora};
  std::vector<std::shared_ptr<LoraLinear>> adapters;
  const std::string file = (dir / kPeftWeightsFile).string();
  for (const auto& module : adapter.modules) {
    const auto parsed = names::parse_module_path(module.path);
    const auto projection = parsed ? find_projection(parsed->module) : std::nullopt;
    const auto layer = projection ? static_cast<std::size_t>(parsed->layer) : 0;
    if (!projection || layer >= model.layers().size())
      throw InputError(file, module.path, "is not a projection of this model (layers 0.." +
                                              std::to_string(model.layers().size() - 1) + ": " + projection_names() + ")");
    auto& target = model.layers()[layer];
    const auto weight = target.weight(*projection);
    if (!weight.defined()) throw InputError(file, module.path, "is a routed MoE layer's MLP, which has no dense projection to adapt");
    if (module.a.size(1) != weight.size(1) || module.b.size(0) != weight.size(0))
      throw InputError(file, module.path, "LoRA shapes A [" + std::to_string(module.a.size(0)) + ", " + std::to_string(module.a.size(1)) +
                                              "] and B [" + std::to_string(module.b.size(0)) + ", " + std::to_string(module.b.size(1)) +
                                              "] do not fit the weight [" + std::to_string(weight.size(0)) + ", " +
                                              std::to_string(weight.size(1)) + "]");
    auto lora = std::make_shared<LoraLinear>(module.path, weight, target.bias(*projection), options,
                                             module.a.to(weight.device()), module.b.to(weight.device()));
    target.adapters->attach(*projection, lora);
    adapters.push_back(std::move(lora));
  }
  return adapters;
}

}  // namespace linearize
