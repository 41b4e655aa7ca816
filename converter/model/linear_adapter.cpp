#include "converter/model/linear_adapter.h"

namespace linearize {
namespace {

const std::array<std::string, kProjectionCount>& names() {
  static const std::array<std::string, kProjectionCount> value{"q_proj", "k_proj",  "v_proj",   "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"};
  return value;
}

}  // namespace

const std::string& projection_name(Projection projection) { return names()[static_cast<std::size_t>(projection)]; }

std::string projection_module(Projection projection) {
  const bool attention = projection == Projection::q || projection == Projection::k || projection == Projection::v ||
                         projection == Projection::o;
  return (attention ? "self_attn." : "mlp.") + projection_name(projection);
}

std::optional<Projection> find_projection(const std::string& name) {
  for (std::size_t i = 0; i < kProjectionCount; ++i)
    if (names()[i] == name) return static_cast<Projection>(i);
  return std::nullopt;
}

std::string projection_names() {
  std::string joined;
  for (const auto& name : names()) joined += (joined.empty() ? "" : ", ") + name;
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
