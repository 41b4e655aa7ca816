#include "distill/schedule.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "formats/error.h"

namespace linearize {

LrSchedule::LrSchedule(const Optimization& optim)
    : optim_(optim), plateau_lr_(optim.lr), best_(std::numeric_limits<double>::infinity()) {}

double LrSchedule::lr(std::int64_t step) const {
  if (optim_.schedule == Schedule::kPlateau) return plateau_lr_;
  if (step <= optim_.warmup) return optim_.lr * static_cast<double>(step) / static_cast<double>(optim_.warmup);
  if (optim_.schedule == Schedule::kConstant) return optim_.lr;
  // Cosine from lr to min_lr over the steps after warm-up (HF get_cosine_schedule_with_warmup, floored).
  const double span = static_cast<double>(std::max<std::int64_t>(1, optim_.steps - optim_.warmup));
  const double progress = std::min(1.0, static_cast<double>(step - optim_.warmup) / span);
  return optim_.min_lr + 0.5 * (optim_.lr - optim_.min_lr) * (1.0 + std::cos(M_PI * progress));
}

void LrSchedule::observe(double loss) {
  if (optim_.schedule != Schedule::kPlateau) return;
  if (loss < best_) {
    best_ = loss;
    bad_evaluations_ = 0;
  } else if (++bad_evaluations_ > optim_.plateau_patience) {
    plateau_lr_ = std::max(plateau_lr_ * optim_.plateau_factor, optim_.min_lr);
    bad_evaluations_ = 0;
  }
}

nlohmann::json LrSchedule::to_json() const {
  // best_ starts at +inf, which JSON cannot hold: null stands for "no evaluation yet".
  return {{"plateau_lr", plateau_lr_},
          {"best", std::isfinite(best_) ? nlohmann::json(best_) : nlohmann::json()},
          {"bad_evaluations", bad_evaluations_}};
}

void LrSchedule::restore(const nlohmann::json& state, const std::string& source) {
  try {
    plateau_lr_ = state.at("plateau_lr").get<double>();
    const auto& best = state.at("best");
    best_ = best.is_null() ? std::numeric_limits<double>::infinity() : best.get<double>();
    bad_evaluations_ = state.at("bad_evaluations").get<std::int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(source, "scheduler", e.what());
  }
}

}  // namespace linearize
