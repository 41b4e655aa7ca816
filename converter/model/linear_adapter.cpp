#include "converter/model/linear_adapter.h"

namespace linearize {

names::LayerModule layer_module(Projection projection) {
  using names::LayerModule;
  static constexpr std::array<LayerModule, kProjectionCount> modules{LayerModule::q_proj,    LayerModule::k_proj,  LayerModule::v_proj,
                                                                     LayerModule::o_proj,    LayerModule::gate_proj,
                                                                     LayerModule::up_proj,   LayerModule::down_proj};
  return modules[static_cast<std::size_t>(projection)];
}

std::string projection_name(Projection projection) { return names::module_name(layer_module(projection)); }

std::optional<Projection> find_projection(const std::string& name) {
  for (std::size_t i = 0; i < kProjectionCount; ++i)
    if (projection_name(static_cast<Projection>(i)) == name) return static_cast<Projection>(i);
  return std::nullopt;
}

std::optional<Projection> find_projection(names::LayerModule module) {
  for (std::size_t i = 0; i < kProjectionCount; ++i)
    if (layer_module(static_cast<Projection>(i)) == module) return static_cast<Projection>(i);
  return std::nullopt;
}

std::string projection_names() {
  std::string joined;
  for (std::size_t i = 0; i < kProjectionCount; ++i) joined += (joined.empty() ? "" : ", ") + projection_name(static_cast<Projection>(i));
  return joined;
}

void LayerAdapters::attach(Projection projection, std::shared_ptr<const LinearAdapter> adapter) {
  slots_[static_cast<std::size_t>(projection)] = std::move(adapter);
}

bool LayerAdapters::empty() const {
  for (const auto& slot : slots_)
    if (slot) return false;
  return true;
}

at::Tensor LayerAdapters::apply(Projection projection, const at::Tensor& x, const at::Tensor& y) const {
  const auto& adapter = slots_[static_cast<std::size_t>(projection)];
  return adapter ? y + adapter->delta(x).to(y.scalar_type()) : y;
}

}  // namespace linearize
