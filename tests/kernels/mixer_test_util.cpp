#include "kernels/mixer_test_util.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>

namespace linearize::test {

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.detach().to(at::kDouble), bd = b.detach().to(at::kDouble);
  TORCH_CHECK(ad.sizes() == bd.sizes(), "max_rel_diff: shapes ", ad.sizes(), " vs ", bd.sizes());
  const double scale = std::max(1.0, bd.abs().max().item<double>());
  return (ad - bd).abs().max().item<double>() / scale;
}

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble)).to(dtype);
}

at::Tensor log_decay(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype) {
  return at::log_sigmoid(randn(std::move(shape), seed) + 2.0).to(dtype);
}

double finite_difference_mismatch(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                                  const std::vector<at::Tensor>& inputs, int directions, uint64_t seed) {
  const at::Tensor y = f(inputs);
  std::vector<at::Tensor> leaves;
  for (const auto& x : inputs) leaves.push_back(x);
  const auto grads = torch::autograd::grad({y}, leaves);
  double worst = 0;
  const double eps = 1e-6;
  for (int d = 0; d < directions; ++d) {
    std::vector<at::Tensor> plus, minus;
    double analytic = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const at::Tensor u = randn(inputs[i].sizes().vec(), seed + 1000 * d + i);
      analytic += (grads[i] * u).sum().item<double>();
      plus.push_back(inputs[i].detach() + eps * u);
      minus.push_back(inputs[i].detach() - eps * u);
    }
    const double numeric = (f(plus) - f(minus)).item<double>() / (2 * eps);
    worst = std::max(worst, std::abs(numeric - analytic) / std::max(1.0, std::abs(analytic)));
  }
  return worst;
}

}  // namespace linearize::test
