// The thresholds of a verification that its caller sets: `verify`'s flags, `convert`'s --generate-tokens and a
// distill run's YAML (verify.max_kl, verify.min_top1, verify.min_gen_agree) all fill this one struct. The fixed
// tolerances (L1's fp64 forms, L3's exactness) and L1's derived drift bound are no settings: they live beside
// their checks (converter/verify/).
#pragma once

#include <cstdint>
#include <optional>

namespace linearize {

struct VerifyThresholds {
  std::optional<double> max_kl;    // L4: mean KL(source || model) at most this; unset: reported, not enforced
  std::optional<double> min_top1;  // L4: top-1 agreement with the source at least this, in [0, 1]
  // L4 greedy generation: tokens per continuation (0: none), and the least mean fraction of them identical to
  // the source's before the first divergence, in [0, 1].
  std::int64_t generate_tokens = 32;
  std::optional<double> min_gen_agree;
  double layer_budget = 0.25;  // L4: per-layer hidden-state relative error budget (the first layer over it is named)
};

}  // namespace linearize
