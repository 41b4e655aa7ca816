// What a distill run measures on its validation sequences (no gradients): next-token quality against the
// teacher, and the stage-1 attention-transfer loss per layer.
#pragma once

#include <vector>

#include "converter/model/causal_lm.h"
#include "distill/data.h"
#include "distill/run_config.h"

namespace linearize {

// Next-token figures on the validation sequences: the teacher's (source) and the student's perplexity,
// and the mean KL(teacher || student) per predicted token.
struct QualityFigures {
  double teacher_perplexity = 0, student_perplexity = 0, kl = 0;
};

QualityFigures evaluate_quality(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches);

// Stage 2's loss counterpart on the figures (what the plateau schedule watches): CE = log perplexity,
// KL, or their sum, as the loss the stage trains.
double stage2_validation_loss(const QualityFigures& q, Stage2Loss kind);

// The attention-transfer loss averaged over the batches, in total and per converted layer.
struct ValidationLoss {
  double loss = 0;
  std::vector<double> layer_loss;
};
ValidationLoss validation_transfer_loss(const CausalLM& student, const CausalLM& source, const std::vector<Batch>& batches,
                                        const Stage1Config& stage);

}  // namespace linearize
