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

// The bytes the checkpoint's tensors take in `dtype` (what loading them all would hold).
double weight_bytes(const CheckpointWeights& weights, at::ScalarType dtype);

// Each tensor is copied exactly once out of the file mapping, into memory of the model's own: GEMMs over
// page-cache pages ran 4x (prefill) to 11x (decode) slower on the 100M bench model than over anonymous
// memory (huge pages, no TLB thrash); and every copied range is released from the mapping, so loading
// holds about one copy of the model, not two.
class ModelWeights {
 public:
  // The tensors of `specs` (checked against the whole checkpoint by check_tensors first: a model reads its own
  // tensors and each layer's apart), converted where dtype/device differ; tensors already in the compute dtype stay
  // views of the mapping until handed out. The checkpoint must outlive this object.
  static ModelWeights read(const CheckpointWeights& weights, const std::vector<TensorSpec>& specs, at::ScalarType dtype,
                           const at::Device& device);

  // A tensor in the model's own memory (copied out of the mapping on first use); throws if absent.
  const at::Tensor& get(const std::string& name) const;
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  at::Tensor optional(const std::string& name) const;  // get(), or undefined if absent
  // Hands a tensor over for the caller to copy (fusing q/k/v, gate/up) and forgets it; undefined if
  // absent. release_taken() then drops the mapped pages of everything taken so far.
  at::Tensor take(const std::string& name);
  void release_taken();

 private:
  struct Entry {
    at::Tensor tensor;
    bool mapped = false;  // still a view of the file mapping
  };
  const CheckpointWeights* checkpoint_ = nullptr;
  mutable std::unordered_map<std::string, Entry> tensors_;
  std::vector<std::string> taken_;
};

}  // namespace linearize
