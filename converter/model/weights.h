// A decoder's weights, checked against the family's tensor specs and converted to the compute dtype/device.
#pragma once

#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>

#include "converter/architectures/architecture.h"
#include "formats/checkpoint.h"

namespace linearize {

// Compares a checkpoint's tensors with the specs and throws ONE InputError naming the listing file and
// every problem at once: missing tensors, unexpected ones, and shapes that differ (expected vs found).
void check_tensors(const CheckpointWeights& weights, const std::vector<TensorSpec>& specs);

class ModelWeights {
 public:
  // Checks `specs` against the checkpoint, then loads each present tensor as `dtype` on `device` into memory
  // of its own (never a view of the file mapping, which computes several times slower).
  static ModelWeights load(const CheckpointWeights& weights, const std::vector<TensorSpec>& specs,
                           at::ScalarType dtype, const at::Device& device);

  const at::Tensor& get(const std::string& name) const;  // throws if absent
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  at::Tensor optional(const std::string& name) const;    // undefined if absent
  // Hands the tensor over and forgets it (undefined if absent): a loader that fuses tensors frees each
  // part as it goes, so loading never holds much more than one copy of the model.
  at::Tensor take(const std::string& name);

 private:
  std::unordered_map<std::string, at::Tensor> tensors_;
};

}  // namespace linearize
