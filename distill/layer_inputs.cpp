#include "distill/layer_inputs.h"

#include <ATen/core/grad_mode.h>

#include <set>

#include "converter/names.h"
#include "formats/error.h"

namespace linearize {

std::int64_t write_layer_cache(const std::filesystem::path& path, const CausalLM& source,
                               const std::vector<std::int64_t>& layers, const std::vector<at::Tensor>& batches,
                               const std::function<void(std::int64_t rows)>& on_batch) {
  TORCH_CHECK(!batches.empty(), "write_layer_cache: no batches");
  at::NoGradGuard no_grad;
  Hdf5Writer writer(path);
  const std::vector<std::int64_t> row{batches.front().size(1), source.config().hidden_size};
  std::set<std::string> wanted;
  for (const auto layer : layers)
    for (const auto& name : {names::capture(layer, names::Capture::attn_in), names::capture(layer, names::Capture::attn_out)}) {
      writer.create_dataset(name, at::kFloat, row);
      wanted.insert(name);
    }
  std::int64_t rows = 0;
  for (const auto& ids : batches) {
    source.forward(ids, [&](const std::string& name, const at::Tensor& value) {
      if (wanted.count(name)) writer.append(name, value.to(at::kFloat));
    });
    rows += ids.size(0);
    if (on_batch) on_batch(rows);
  }
  writer.close();
  return rows;
}

LayerCache::LayerCache(const std::filesystem::path& path, const std::vector<std::int64_t>& layers, std::int64_t hidden)
    : reader_(path) {
  bool first = true;
  for (const auto layer : layers)
    for (const auto& name : {names::capture(layer, names::Capture::attn_in), names::capture(layer, names::Capture::attn_out)}) {
      const auto shape = reader_.shape(name);  // an InputError naming the file and dataset when missing
      const auto fail = [&](const std::string& what) { throw InputError(path.string(), name, what); };
      if (reader_.dtype(name) != at::kFloat) fail(std::string("expected fp32 rows, got ") + c10::toString(reader_.dtype(name)));
      if (shape.size() != 3 || shape[2] != hidden)
        fail("expected rows [T, " + std::to_string(hidden) + "], got shape [" + c10::Join(", ", shape) + "]");
      if (first) {
        rows_ = shape[0];
        seq_len_ = shape[1];
        first = false;
      } else if (shape[0] != rows_ || shape[1] != seq_len_) {
        fail("shape [" + c10::Join(", ", shape) + "] differs from the other datasets' [" + std::to_string(rows_) + ", " +
             std::to_string(seq_len_) + ", " + std::to_string(hidden) + "]");
      }
    }
}

at::Tensor LayerCache::input(std::int64_t layer, std::int64_t begin, std::int64_t end) const {
  return reader_.read(names::capture(layer, names::Capture::attn_in), begin, end);
}

at::Tensor LayerCache::target(std::int64_t layer, std::int64_t begin, std::int64_t end) const {
  return reader_.read(names::capture(layer, names::Capture::attn_out), begin, end);
}

TransferLoss layerwise_transfer_loss(const CausalLM& student, const CausalLM& source, const LayerCache& cache,
                                     std::int64_t layer, std::int64_t begin, std::int64_t end, double factor,
                                     Stage1Loss loss) {
  const auto options = student.options();
  const auto x = cache.input(layer, begin, end).to(options.device, options.dtype);
  // xent reads no target: skip its rows.
  const auto target = loss == Stage1Loss::kMse ? cache.target(layer, begin, end).to(options.device) : at::Tensor();
  auto value = layer_transfer_loss(student, source, layer, x, target, loss);
  TransferLoss result;
  result.layers = {layer};
  result.layer_loss = {value.item<double>()};
  result.loss = factor * value;
  return result;
}

}  // namespace linearize
