// Additive adapters on a decoder layer's frozen linear projections, y = W x + b + delta(x) (LoRA:
// converter/model/lora.h). The projections consult their layer's adapters, so a recipe mixer that calls
// the source attention's projections sees the same adapters as the softmax mixer would.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "converter/names.h"

namespace linearize {

// The projections of a decoder layer, by their Hugging Face module names.
enum class Projection : std::size_t { q, k, v, o, gate, up, down };
inline constexpr std::size_t kProjectionCount = 7;

// The layer module a projection is (converter/names.h builds its names).
names::LayerModule layer_module(Projection projection);
// "q_proj", ..., "down_proj" (PEFT's target_modules names).
std::string projection_name(Projection projection);
std::optional<Projection> find_projection(const std::string& name);
std::optional<Projection> find_projection(names::LayerModule module);
// Every projection name, for error messages.
std::string projection_names();

class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // The change to the projection's output for input x [..., in]: [..., out].
  virtual at::Tensor delta(const at::Tensor& x) const = 0;
};

class LayerAdapters {
 public:
  void attach(Projection projection, std::shared_ptr<const LinearAdapter> adapter);
  bool has(Projection projection) const { return slots_[static_cast<std::size_t>(projection)] != nullptr; }
  bool empty() const;
  // y + delta(x) in y's dtype when an adapter is attached to `projection`; y itself otherwise.
  at::Tensor apply(Projection projection, const at::Tensor& x, const at::Tensor& y) const;

 private:
  std::array<std::shared_ptr<const LinearAdapter>, kProjectionCount> slots_;
};

}  // namespace linearize
