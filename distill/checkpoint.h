// Training checkpoints (docs/distillation.md#checkpoints-and-resume): everything a run needs to continue exactly where it stopped,
// as a directory <root>/step-000123/ that appears whole or not at all:
//   trainables.safetensors  the trained tensors, by name
//   optimizer.safetensors   AdamW moments per trainable: <name>.exp_avg, <name>.exp_avg_sq (+ .max_exp_avg_sq)
//   rng.safetensors         generator states: "cpu", "cuda.<i>"
//   config.yaml             the effective run config
//   state.json              format_version, step, optimizer steps and group options, scheduler, data position
// It is written into <root>/.step-000123.tmp/, fsynced, then renamed (Marian's and LoLCATs' checkpoints
// lack that atomicity: a kill mid-save leaves a torn file). Only the newest `keep` complete ones stay.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"

namespace torch::optim {
class AdamW;
}

namespace linearize {

// The default generators' states: the CPU one, and each CUDA device's when CUDA is present.
struct RngState {
  at::Tensor cpu;
  std::vector<at::Tensor> cuda;  // by device index
};
RngState capture_rng();
// Restores the CPU state and the CUDA states of the devices present (a resume on fewer GPUs restores fewer).
void restore_rng(const RngState& state);

// AdamW's per-parameter state (step, exp_avg, exp_avg_sq, max_exp_avg_sq) and its groups' options.
struct OptimizerState {
  NamedTensors tensors;  // "<param>.exp_avg", ...
  nlohmann::json meta;   // {"steps": {param: step}, "groups": [{lr, betas, eps, weight_decay, amsgrad}]}
};
// `params` names every tensor the optimiser holds (throws std::invalid_argument for one it does not name).
OptimizerState save_adamw(const torch::optim::AdamW& optimizer, const NamedTensors& params);
// Puts the saved state into a fresh optimiser over the same named params; `source` names the checkpoint
// in InputErrors (a missing or misshapen moment, a different number of groups).
void load_adamw(torch::optim::AdamW& optimizer, const NamedTensors& params, const OptimizerState& state, const std::string& source);

struct TrainingState {
  std::int64_t step = 0;
  NamedTensors trainables;
  OptimizerState optimizer;
  nlohmann::json scheduler = nlohmann::json::object();
  nlohmann::json data_position = nlohmann::json::object();
  std::string config_yaml;
  RngState rng;
};

// Copies saved values into the live parameters (in place, so optimisers keep their handles); the names and
// shapes must match exactly (InputError naming `source` and the tensor otherwise).
void copy_trainables(const NamedTensors& params, const NamedTensors& saved, const std::string& source);

class CheckpointManager {
 public:
  CheckpointManager(std::filesystem::path root, std::int64_t keep);

  // Writes the checkpoint of `state.step`, replacing one of the same step, then drops the oldest beyond
  // `keep`. On any failure (disk full, permissions, ...) removes what it wrote and throws InputError naming
  // the checkpoint and the file, with the previous checkpoint left intact and named in the message.
  std::filesystem::path save(const TrainingState& state);

  // Complete checkpoints, oldest first (half-written temporary directories are not listed).
  std::vector<std::filesystem::path> complete() const;
  std::optional<std::filesystem::path> latest() const;

  // Reads a checkpoint directory; tensors are copied out of the files. Throws InputError for a bad one.
  static TrainingState load(const std::filesystem::path& dir);

  // Tests: called with each file's path before it is written; an exception thrown here is a write failure.
  void set_write_hook(std::function<void(const std::filesystem::path&)> hook) { write_hook_ = std::move(hook); }

  const std::filesystem::path& root() const { return root_; }

 private:
  void write_files(const std::filesystem::path& dir, const TrainingState& state, std::filesystem::path& current) const;

  std::filesystem::path root_;
  std::int64_t keep_;
  std::function<void(const std::filesystem::path&)> write_hook_;
};

std::string checkpoint_dir_name(std::int64_t step);  // "step-000123"

}  // namespace linearize
