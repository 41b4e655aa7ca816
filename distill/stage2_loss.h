// Stage 2's loss (docs/distillation.md#stage-2-lora) on ids [B, T] with labels [B, T] (-100: no loss), averaged over the
// predicted tokens: next-token cross-entropy (position t predicts label t + 1, the HF shift), KL(teacher ||
// student) of the next-token distributions on the same positions (the teacher is the source model, no
// grad), or their sum. Differentiable in the student's trainables (its LoRA adapters). With `cached`, the
// teacher's top k of these rows (distill/teacher_cache.h), the KL is KL_k and the teacher does not run.
// With the student's blocks checkpointed (CausalLM::set_checkpoint_blocks), the head and the loss run over
// slices of head_chunk_elements / vocab positions, each slice checkpointed too (the same loss up to the
// order of its sums).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "converter/model/causal_lm.h"
#include "distill/run_config.h"
#include "distill/teacher_cache.h"

namespace linearize {

at::Tensor stage2_loss(const CausalLM& student, const CausalLM& teacher, const at::Tensor& ids, const at::Tensor& labels,
                       Stage2Loss kind, const TeacherTopK* cached = nullptr,
                       std::int64_t head_chunk_elements = std::int64_t{1} << 24);

}  // namespace linearize
