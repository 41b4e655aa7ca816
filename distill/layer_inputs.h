// Layer-wise (block-wise) attention transfer (docs/distillation.md#stage-1-attention-transfer, docs/formats.md#hdf5-stores; LoLCATs'
// save_llama_attn_inputs.py + distill_mini_train.py): the teacher runs once over the training sequences
// and an HDF5 file keeps, per converted layer, its input (`layers.{i}.attn_in`) and the teacher's output
// (`layers.{i}.attn_out`), one row [T, hidden] fp32 per sequence. Each layer then trains on its own rows,
// without the teacher's forward and independently of the other layers (so layers can go to different
// devices or ranks). fp32 holds the fp32 activations exactly: a row read back is the tensor captured.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "distill/attention_transfer.h"
#include "formats/hdf5_store.h"

namespace linearize {

// Runs `source` on each batch of ids [B, T] (one T for all) and writes the listed layers' inputs and
// outputs to `path` (temporary file + rename: the cache is whole or absent). on_batch(rows written so far)
// after each batch, for progress. Returns the rows written (the sum of B).
std::int64_t write_layer_cache(const std::filesystem::path& path, const CausalLM& source,
                               const std::vector<std::int64_t>& layers, const std::vector<at::Tensor>& batches,
                               const std::function<void(std::int64_t rows)>& on_batch = {});

// A cache opened for reading, checked up front: both datasets of every listed layer, all [N, T, hidden]
// fp32 with one N and T; else an InputError naming the file and the dataset.
class LayerCache {
 public:
  LayerCache(const std::filesystem::path& path, const std::vector<std::int64_t>& layers, std::int64_t hidden);

  std::int64_t rows() const { return rows_; }
  std::int64_t seq_len() const { return seq_len_; }
  // Rows [begin, end) of a layer's input and target, on the CPU.
  at::Tensor input(std::int64_t layer, std::int64_t begin, std::int64_t end) const;
  at::Tensor target(std::int64_t layer, std::int64_t begin, std::int64_t end) const;

 private:
  Hdf5Reader reader_;
  std::int64_t rows_ = 0, seq_len_ = 0;
};

// One layer's stage-1 loss on cached rows [begin, end): factor x layer_transfer_loss on them (moved to the
// student's device and dtype), as a TransferLoss of that one layer. Only that layer's trainables get
// gradients; the source model is read only by xent, for that layer's attention weights.
TransferLoss layerwise_transfer_loss(const CausalLM& student, const CausalLM& source, const LayerCache& cache,
                                     std::int64_t layer, std::int64_t begin, std::int64_t end, double factor,
                                     Stage1Loss loss);

}  // namespace linearize
