// Learning-rate schedules of a stage (run_config.h Optimization): constant or cosine, each after a linear
// warm-up, or ReduceLROnPlateau (PyTorch's: the lr is multiplied by `plateau_factor` once more than
// `plateau_patience` evaluations in a row did not improve on the best loss, never below `min_lr`).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "distill/run_config.h"

namespace linearize {

class LrSchedule {
 public:
  explicit LrSchedule(const Optimization& optim);

  // The lr of optimiser step `step` (1-based).
  double lr(std::int64_t step) const;
  // An evaluation's loss (plateau only; the other schedules ignore it).
  void observe(double loss);

  // What a checkpoint keeps, and its restore (`source` names the checkpoint in errors).
  nlohmann::json to_json() const;
  void restore(const nlohmann::json& state, const std::string& source);

 private:
  Optimization optim_;
  double plateau_lr_;
  double best_;
  std::int64_t bad_evaluations_ = 0;
};

}  // namespace linearize
