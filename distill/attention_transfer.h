// Stage 1, attention transfer (LoLCATs, research/linearization.md 2; DESIGN section 7): only the recipe's
// new tensors train, against the exact fp32 softmax attention of the same layer on the same input.
// Joint over all converted layers: the source model's forward (no grad) gives every layer's input
// (`layers.{i}.attn_in`, the teacher's hidden states, as LoLCATs feeds the teacher's output onward) and
// the teacher's output (`layers.{i}.attn_out`, the source attention on that input); each converted
// mixer then runs on the same input, and
//   loss = factor x mean over converted layers of MSE(student mixer output, teacher output).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "converter/model/causal_lm.h"
#include "formats/safetensors.h"

namespace linearize {

// "model.layers.{i}.self_attn." (the HF names a converted layer's new tensors are stored under).
std::string self_attn_scope(std::int64_t layer);

// Every converted layer's new tensors as trainable parameters, by their stored names
// ("model.layers.0.self_attn.feature_map_q.weight"). Each is first given its own memory (loaded fp32
// weights view the read-only file mapping) and set to require grad; nothing else in the model does.
NamedTensors make_stage1_trainable(CausalLM& student);

// The layer index in a stored name ("model.layers.3.self_attn.x" -> 3), -1 for none.
std::int64_t layer_of(const std::string& name);

struct TransferLoss {
  at::Tensor loss;                   // factor x mean of layer_mse, differentiable in the trainables
  std::vector<std::int64_t> layers;  // the converted layers, in order
  std::vector<double> layer_mse;     // per converted layer, unscaled
};

// The loss above on ids [B, T]. `source` is the source model (softmax mixers, fp32); `student` the
// converted one. Gradients flow into the student's trainables only.
TransferLoss attention_transfer_loss(const CausalLM& student, const CausalLM& source, const at::Tensor& ids,
                                     double factor);

}  // namespace linearize
