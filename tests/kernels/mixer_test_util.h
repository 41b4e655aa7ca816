// Helpers shared by the kernels tests: seeded inputs, relative differences, a directional
// finite-difference gradient check.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace linearize::test {

// max |a - b| / max(1, max |b|): an absolute error for O(1) values, relative for large ones.
double max_rel_diff(const at::Tensor& a, const at::Tensor& b);

// A seeded generator's standard normals (independent of the global RNG state).
at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kDouble);

// Log decays <= 0 with a typical value of about -0.13 per step (logsigmoid(N(2, 1))): a chunk of 64 decays
// by about e^-8, so both the intra-chunk and the carried-state terms matter.
at::Tensor log_decay(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kDouble);

// Checks the gradient of a scalar function f of `inputs` (fp64, requiring grad) against central
// differences along `directions` random unit directions; returns the worst relative mismatch.
double finite_difference_mismatch(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                                  const std::vector<at::Tensor>& inputs, int directions, uint64_t seed);

}  // namespace linearize::test
