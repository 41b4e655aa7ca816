#include "converter/model/weights.h"

#include <algorithm>

#include <set>
#include <sstream>
#include <stdexcept>

#include "formats/error.h"

namespace linearize {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Buffers some exporters wrote next to the weights; transformers recomputes them and so do we.
bool is_ignorable(const std::string& name) {
  const std::string suffix = ".rotary_emb.inv_freq";
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void check_tensors(const CheckpointWeights& weights, const std::vector<TensorSpec>& specs) {
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> expected;
  for (const auto& spec : specs) {
    expected.insert(spec.name);
    if (!weights.contains(spec.name)) {
      if (!spec.optional) missing.push_back(spec.name + " " + shape_text(spec.shape));
      continue;
    }
    const auto& found = weights.entry(spec.name).shape;
    if (found != spec.shape)
      misshaped.push_back(spec.name + " expected " + shape_text(spec.shape) + " found " + shape_text(found));
  }
  for (const auto& name : weights.names())
    if (!expected.count(name) && !is_ignorable(name)) unexpected.push_back(name);
  if (missing.empty() && misshaped.empty() && unexpected.empty()) return;

  std::ostringstream msg;
  // The first few of each kind: a MoE checkpoint read with the wrong expert count misses thousands, and one line
  // must stay readable.
  constexpr std::size_t kShown = 6;
  const auto list = [&](const char* what, const std::vector<std::string>& items) {
    if (items.empty()) return;
    msg << (msg.tellp() > 0 ? "; " : "") << items.size() << ' ' << what << ": ";
    for (std::size_t i = 0; i < std::min(items.size(), kShown); ++i) msg << (i ? ", " : "") << items[i];
    if (items.size() > kShown) msg << ", ... (" << items.size() - kShown << " more)";
  };
  list("missing", missing);
  list("mis-shaped", misshaped);
  list("unexpected", unexpected);
  throw InputError(weights.listing_path(), "tensors", msg.str() + " (for the shapes config.json implies)");
}

double weight_bytes(const CheckpointWeights& weights, at::ScalarType dtype) {
  double bytes = 0;
  for (const auto& name : weights.names()) {
    double count = 1;
    for (const auto d : weights.entry(name).shape) count *= static_cast<double>(d);
    bytes += count * static_cast<double>(c10::elementSize(dtype));
  }
  return bytes;
}

ModelWeights ModelWeights::read(const CheckpointWeights& weights, const std::vector<TensorSpec>& specs,
                                at::ScalarType dtype, const at::Device& device) {
  ModelWeights out;
  out.checkpoint_ = &weights;
  for (const auto& spec : specs) {
    if (!weights.contains(spec.name)) continue;
    const auto mapped = weights.tensor(spec.name);
    auto loaded = mapped.to(device, dtype);
    const bool still_mapped = loaded.data_ptr() == mapped.data_ptr();
    if (!still_mapped) weights.release(spec.name);  // converted: the copy is ours already
    out.tensors_.emplace(spec.name, Entry{std::move(loaded), still_mapped});
  }
  return out;
}

const at::Tensor& ModelWeights::get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::out_of_range("ModelWeights: no tensor " + name);
  auto& entry = it->second;
  if (entry.mapped) {
    entry.tensor = entry.tensor.clone();
    entry.mapped = false;
    checkpoint_->release(name);
  }
  return entry.tensor;
}

at::Tensor ModelWeights::take(const std::string& name) {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return {};
  auto t = std::move(it->second.tensor);
  if (it->second.mapped) taken_.push_back(name);
  tensors_.erase(it);
  return t;
}

void ModelWeights::release_taken() {
  for (const auto& name : taken_) checkpoint_->release(name);
  taken_.clear();
}

at::Tensor ModelWeights::optional(const std::string& name) const {
  return contains(name) ? get(name) : at::Tensor();
}

}  // namespace linearize
