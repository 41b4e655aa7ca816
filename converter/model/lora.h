// LoRA on a frozen linear layer (Hu et al. 2021; PEFT's lora.Linear, peft:src/peft/tuners/lora/layer.py):
//   y = x W^T + bias + scale * B(A(dropout(x))),  scale = alpha / r, or alpha / sqrt(r) with rsLoRA.
// A [r, in] starts kaiming-uniform(a = sqrt(5)) like PEFT, i.e. U(-1/sqrt(in), 1/sqrt(in)); B [out, r]
// starts at zero, so a fresh adapter leaves the layer unchanged.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "converter/model/linear_adapter.h"
#include "formats/peft_adapter.h"

namespace linearize {

struct LoraOptions {
  std::int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool rslora = false;
};

double lora_scale(const LoraOptions& options);

// As a LinearAdapter it adds scale * B(A(dropout(x))) to its projection inside the model; dropout acts
// only while set_training(true).
class LoraLinear final : public LinearAdapter {
 public:
  // `path` is the HF module path ("model.layers.0.self_attn.q_proj"), used in tensor names and errors.
  // `weight` [out, in] and `bias` ([out] or undefined) stay frozen, in their own dtype and device; A and B
  // are fp32 on the weight's device and require grad. A is drawn from `generator` (default: the global one).
  LoraLinear(std::string path, at::Tensor weight, at::Tensor bias, const LoraOptions& options,
             std::optional<at::Generator> generator = std::nullopt);
  // An adapter with given A [r, in] and B [out, r] (read back from a PEFT directory; copied, fp32, frozen).
  LoraLinear(std::string path, at::Tensor weight, at::Tensor bias, const LoraOptions& options, const at::Tensor& a,
             const at::Tensor& b);

  // Dropout (training only) acts on the LoRA path's input; the LoRA path runs in fp32 (PEFT casts the
  // input to lora_A's dtype) and is added in the base output's dtype.
  at::Tensor forward(const at::Tensor& x, bool training) const;
  at::Tensor delta(const at::Tensor& x) const override { return lora_path(x, training_); }
  void set_training(bool training) { training_ = training; }

  // W + scale * B A in fp32 ([out, in]); throws std::runtime_error naming the module when any merged
  // value is NaN/Inf (PEFT's safe_merge), so a broken adapter is never folded into an export.
  at::Tensor merge() const;

  const std::string& path() const { return path_; }
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  const at::Tensor& a() const { return a_; }  // the trainable parameters (handles: optimisers update them)
  const at::Tensor& b() const { return b_; }
  double scale() const { return scale_; }
  const LoraOptions& options() const { return options_; }

  // The trainable tensors' checkpoint / PEFT names: "<path>.lora_A.weight", "<path>.lora_B.weight".
  std::string a_name() const { return peft_lora_a_name(path_); }
  std::string b_name() const { return peft_lora_b_name(path_); }
  PeftLoraModule to_peft() const { return {path_, a_, b_}; }

 private:
  at::Tensor lora_path(const at::Tensor& x, bool training) const;

  std::string path_;
  at::Tensor weight_, bias_, a_, b_;
  LoraOptions options_;
  double scale_;
  bool training_ = false;
};

class CausalLM;

// LoRA on `targets` ("q_proj", ...) of every layer of `model`, attached to its projections: fresh adapters
// (B = 0, so the model is unchanged) whose A draw from `generator` (a CPU one; default: the global one),
// layer by layer in target order.
std::vector<std::shared_ptr<LoraLinear>> attach_lora(CausalLM& model, const std::vector<std::string>& targets,
                                                     const LoraOptions& options,
                                                     std::optional<at::Generator> generator = std::nullopt);

// A PEFT adapter directory's modules attached to `model` (kPeftAdapterDir of an export). Throws InputError
// naming the directory and the module for a path the model lacks or shapes that disagree.
std::vector<std::shared_ptr<LoraLinear>> attach_peft_adapter(CausalLM& model, const std::filesystem::path& dir);

// The adapter of an exported model: <model>/adapter/ (PEFT's layout, loadable onto the model's HF names).
inline constexpr const char* kPeftAdapterDir = "adapter";

}  // namespace linearize
