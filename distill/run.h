// A `linearize distill` run (docs/distillation.md): converts the source with the recipe into <out>/converted
// (once), trains stage 1 (attention transfer, distill/attention_transfer.h), then stage 2 (LoRA on the
// configured projections, base frozen, next-token CE and/or KL to the source's logits), each with AdamW,
// its schedule, gradient accumulation and clipping. Optimiser steps are numbered across both stages
// (stage 2 continues after stage 1's last), so one checkpoint directory and one metrics.jsonl serve both.
// Checkpoints every `checkpoint.every` steps, at each stage's end and at a stop. At the end it exports
// <out>/model (stage 2's adapter in <out>/model/adapter, PEFT's layout, or merged into the weights),
// records its verify logits and verifies it against the source. Records: <out>/metrics.jsonl,
// <out>/report.html, a progress line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <stdexcept>

#include "converter/verify.h"
#include "distill/evaluate.h"
#include "distill/run_config.h"
#include "formats/safetensors.h"

namespace linearize {

struct DistillOptions {
  RunConfig config;
  bool resume = false;       // continue from the newest complete checkpoint
  std::FILE* progress = stderr;
  // Tests: at the start of optimiser step `poison_step` one trainable value becomes NaN, so the step's
  // loss and gradients are non-finite (the divergence stop).
  std::optional<std::int64_t> poison_step;
};

struct DistillResult {
  bool stopped = false;  // SIGINT/SIGTERM: the step finished and `checkpoint` holds it
  std::int64_t step = 0;
  std::filesystem::path checkpoint;
  std::filesystem::path export_dir;  // (with `verify`) empty on the ranks other than 0 of a multi-process job
  // Training-free, after stage 1 (when stage 2 follows) and at the end; absent when stopped or resumed
  // past the point they were measured at.
  std::optional<QualityFigures> before, after_stage1, after;
  std::optional<double> initial_transfer_loss, final_transfer_loss;  // validation, stage 1
  std::optional<VerifyReport> verify;
};

// A non-finite loss or gradient: the message names the step, the layer and the tensor, and the last good
// checkpoint (left as it was).
struct TrainingDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Scales every gradient of `params` by max_norm / (norm + 1e-6) when their global L2 norm exceeds max_norm
// (max_norm <= 0: never), as torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
double clip_gradients(const NamedTensors& params, double max_norm);

// Throws InputError for a config or data problem (before training starts), TrainingDiverged as above.
DistillResult run_distill(const DistillOptions& options);

}  // namespace linearize
