#include "distill/attention_transfer.h"

#include <ATen/core/grad_mode.h>

#include <map>
#include <set>

#include "converter/names.h"
#include "formats/error.h"
#include "kernels/checkpoint.h"

namespace linearize {

NamedTensors make_stage1_trainable(CausalLM& student) {
  NamedTensors params;
  for (std::size_t i = 0; i < student.layers().size(); ++i) {
    for (auto& [name, tensor] : student.layers()[i].mixer->trainable()) {
      // set_data swaps the storage under every handle of this tensor, the mixer's included.
      tensor.set_data(tensor.detach().clone());
      tensor.requires_grad_(true);
      params.emplace_back(names::recipe_tensor(static_cast<std::int64_t>(i), name), tensor);
    }
  }
  return params;
}

std::vector<std::int64_t> converted_layers(const CausalLM& student) {
  std::vector<std::int64_t> layers;
  for (std::size_t i = 0; i < student.layers().size(); ++i)
    if (!student.layers()[i].mixer->trainable().empty()) layers.push_back(static_cast<std::int64_t>(i));
  return layers;
}

namespace {

constexpr const char* kConfigSource = "run config";

// The student layer's weights, or the InputError for a recipe that has none.
at::Tensor student_weights(const CausalLM& student, std::int64_t layer, const at::Tensor& x) {
  auto weights = student.layers()[static_cast<std::size_t>(layer)].mixer->attention_weights(x);
  if (!weights.defined())
    throw InputError(kConfigSource, "stage1.loss",
                     "xent needs attention weights that sum to one over the keys; recipe " +
                         student.config().linearize.value("recipe", std::string("?")) + " (layer " +
                         std::to_string(layer) + ") mixes no such weights: use mse");
  return weights;
}

}  // namespace

at::Tensor attention_weight_xent(const at::Tensor& teacher, const at::Tensor& student) {
  // The clamp is LoLCATs' (distill_attention_xent_mse.py): a weight that underflows to 0 where the teacher's
  // is not would make the loss infinite. Masked keys have teacher weight 0 and add nothing. A teacher with sinks
  // (gpt-oss) leaves the sink's share out, so its rows sum to m < 1: the student's optimum is then the teacher's
  // weights renormalised over the keys (minimising -sum p log q over distributions q gives q = p / m).
  return -(teacher * student.clamp_min(1e-12).log()).sum(-1).mean();
}

at::Tensor layer_transfer_loss(const CausalLM& student, const CausalLM& source, std::int64_t layer, const at::Tensor& x,
                               const at::Tensor& teacher_out, Stage1Loss loss) {
  const auto index = static_cast<std::size_t>(layer);
  if (loss == Stage1Loss::kXent) {
    at::Tensor teacher;
    {
      at::NoGradGuard no_grad;
      teacher = source.layers()[index].mixer->attention_weights(x);
    }
    return attention_weight_xent(teacher, student_weights(student, layer, x));
  }
  const TokenMixer* mixer = student.layers()[index].mixer.get();
  const auto mix = [mixer, layer](const at::Tensor& input) {
    return mixer->forward(input, 0, nullptr, MixerCall{CaptureFn(), names::mixer_scope(layer), kernels::MixerForm::chunked});
  };
  // With the student's blocks checkpointed, the mixer keeps only its input (the teacher's, held anyway).
  const auto student_out = student.checkpoint_blocks() ? kernels::checkpointed(mix, x) : mix(x);
  return at::mse_loss(student_out.to(at::kFloat), teacher_out.to(at::kFloat));
}

void check_stage1_loss(const CausalLM& student, Stage1Loss loss) {
  if (loss != Stage1Loss::kXent) return;
  at::NoGradGuard no_grad;
  const auto one_token = at::zeros({1, 1, student.config().hidden_size}, student.options().dtype).to(student.options().device);
  // Every layer, not only those with trainables: liger-gla trains none, and is no less refused.
  for (std::size_t layer = 0; layer < student.layers().size(); ++layer)
    student_weights(student, static_cast<std::int64_t>(layer), one_token);
}

TransferLoss attention_transfer_loss(const CausalLM& student, const CausalLM& source, const at::Tensor& ids,
                                     double factor, Stage1Loss loss) {
  TransferLoss result;
  result.layers = converted_layers(student);

  std::map<std::string, at::Tensor> captured;
  {
    at::NoGradGuard no_grad;
    std::set<std::string> wanted;
    for (const auto layer : result.layers) {
      wanted.insert(names::capture(layer, names::Capture::attn_in));
      wanted.insert(names::capture(layer, names::Capture::attn_out));
    }
    source.forward(ids, [&](const std::string& name, const at::Tensor& value) {
      if (wanted.count(name)) captured[name] = value;
    });
  }

  std::vector<at::Tensor> losses;
  for (const auto layer : result.layers) {
    auto value = layer_transfer_loss(student, source, layer, captured.at(names::capture(layer, names::Capture::attn_in)),
                                     captured.at(names::capture(layer, names::Capture::attn_out)), loss);
    result.layer_loss.push_back(value.item<double>());
    losses.push_back(std::move(value));
  }
  result.loss = factor * at::stack(losses).mean();
  return result;
}

}  // namespace linearize
