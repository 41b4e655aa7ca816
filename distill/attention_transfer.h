// Stage 1, attention transfer (LoLCATs, arXiv 2410.10254; docs/distillation.md#stage-1-attention-transfer): only the recipe's
// new tensors train, against the exact fp32 softmax attention of the same layer on the same input.
// Joint over all converted layers: the source model's forward (no grad) gives every layer's input
// (`layers.{i}.attn_in`, the teacher's hidden states, as LoLCATs feeds the teacher's output onward) and
// the teacher's output (`layers.{i}.attn_out`, the source attention on that input); each converted
// mixer then runs on the same input, and
//   loss = factor x mean over converted layers of the layer's loss,
// the layer's loss being (stage1.loss)
//   mse : MSE(student mixer output, teacher output) (LoLCATs stage 1);
//   xent: Hedgehog's attention distillation (Zhang et al. 2024, arXiv 2402.04347; docs/recipes.md#hedgehog),
//         mean over batch, heads and queries i of -sum_j A_ij log Â_ij, A the teacher's causal softmax
//         weights and Â the student's (TokenMixer::attention_weights), as soft labels. Defined for mixers
//         whose output is a normalised mix of values (hedgehog; lolcats, whose weights are the window and
//         linear terms over their shared normaliser, as LoLCATs' own xent); refused for the others.
//         Materialises [B, H, T, T] per layer: fine at training lengths (T = 1024, H = 32: 128 MiB fp32 per
//         sequence and tensor), not for long contexts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "converter/model/causal_lm.h"
#include "distill/run_config.h"
#include "formats/safetensors.h"

namespace linearize {

// Every converted layer's new tensors as trainable parameters, by their stored names
// ("model.layers.0.self_attn.feature_map_q.weight"). Each is first given its own memory (loaded fp32
// weights view the read-only file mapping) and set to require grad; nothing else in the model does.
NamedTensors make_stage1_trainable(CausalLM& student);

// The layers whose mixer has trainable tensors, in order.
std::vector<std::int64_t> converted_layers(const CausalLM& student);

struct TransferLoss {
  at::Tensor loss;                   // factor x mean of layer_loss, differentiable in the trainables
  std::vector<std::int64_t> layers;  // the layers computed, in order
  std::vector<double> layer_loss;     // per layer, unscaled: the MSE, or the cross-entropy under xent
};

// The loss above on ids [B, T]. `source` is the source model (softmax mixers, fp32); `student` the
// converted one. Gradients flow into the student's trainables only.
TransferLoss attention_transfer_loss(const CausalLM& student, const CausalLM& source, const at::Tensor& ids,
                                     double factor, Stage1Loss loss = Stage1Loss::kMse);

// One layer's unscaled loss on its input x [B, T, hidden] (the teacher's hidden states) and the teacher's
// output of it (read by mse only; xent recomputes the teacher's weights from x in that source layer).
at::Tensor layer_transfer_loss(const CausalLM& student, const CausalLM& source, std::int64_t layer, const at::Tensor& x,
                               const at::Tensor& teacher_out, Stage1Loss loss);

// Soft-label cross-entropy of attention weights [..., T, T]: mean over the leading dims and queries of
// -sum_j teacher_ij log student_ij.
at::Tensor attention_weight_xent(const at::Tensor& teacher, const at::Tensor& student);

// Refuses, before any training, a loss the student's recipe cannot give: xent where a layer's mixer has no
// attention weights (InputError on "run config", stage1.loss, naming the recipe).
void check_stage1_loss(const CausalLM& student, Stage1Loss loss);

}  // namespace linearize
