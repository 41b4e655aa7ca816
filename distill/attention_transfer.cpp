#include "distill/attention_transfer.h"

#include <ATen/core/grad_mode.h>

#include <map>
#include <regex>
#include <set>

namespace linearize {

std::string self_attn_scope(std::int64_t layer) { return "model.layers." + std::to_string(layer) + ".self_attn."; }

NamedTensors make_stage1_trainable(CausalLM& student) {
  NamedTensors params;
  for (std::size_t i = 0; i < student.layers().size(); ++i) {
    for (auto& [name, tensor] : student.layers()[i].mixer->trainable()) {
      // set_data swaps the storage under every handle of this tensor, the mixer's included.
      tensor.set_data(tensor.detach().clone());
      tensor.requires_grad_(true);
      params.emplace_back(self_attn_scope(static_cast<std::int64_t>(i)) + name, tensor);
    }
  }
  return params;
}

std::int64_t layer_of(const std::string& name) {
  static const std::regex pattern(R"(^model\.layers\.(\d+)\.)");
  std::smatch m;
  return std::regex_search(name, m, pattern) ? std::stoll(m[1].str()) : -1;
}

TransferLoss attention_transfer_loss(const CausalLM& student, const CausalLM& source, const at::Tensor& ids,
                                     double factor) {
  TransferLoss result;
  for (std::size_t i = 0; i < student.layers().size(); ++i)
    if (!student.layers()[i].mixer->trainable().empty()) result.layers.push_back(static_cast<std::int64_t>(i));

  std::map<std::string, at::Tensor> captured;
  {
    at::NoGradGuard no_grad;
    std::set<std::string> wanted;
    for (const auto layer : result.layers) {
      wanted.insert("layers." + std::to_string(layer) + ".attn_in");
      wanted.insert("layers." + std::to_string(layer) + ".attn_out");
    }
    source.forward(ids, [&](const std::string& name, const at::Tensor& value) {
      if (wanted.count(name)) captured[name] = value;
    });
  }

  std::vector<at::Tensor> losses;
  const CaptureFn no_capture;
  for (const auto layer : result.layers) {
    const auto scope = "layers." + std::to_string(layer);
    const auto& x = captured.at(scope + ".attn_in");
    const auto& teacher = captured.at(scope + ".attn_out");
    const auto student_out = student.layers()[static_cast<std::size_t>(layer)].mixer->forward(
        x, 0, nullptr, MixerCall{no_capture, scope + ".mixer", kernels::MixerForm::chunked});
    auto mse = at::mse_loss(student_out.to(at::kFloat), teacher.to(at::kFloat));
    result.layer_mse.push_back(mse.item<double>());
    losses.push_back(std::move(mse));
  }
  result.loss = factor * at::stack(losses).mean();
  return result;
}

}  // namespace linearize
