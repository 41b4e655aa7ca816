// A Hugging Face weights directory: `model.safetensors`, or shards listed by
// `model.safetensors.index.json`, whose weight_map is checked against the shard headers both ways.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/safetensors.h"

namespace linearize {

inline constexpr const char* kSingleWeightsFile = "model.safetensors";
inline constexpr const char* kShardIndexFile = "model.safetensors.index.json";

class CheckpointWeights {
 public:
  // Opens (maps) every shard and validates the index; throws InputError naming the file and field.
  static CheckpointWeights open(const std::filesystem::path& dir);

  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  bool sharded() const { return index_path_.has_value(); }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorEntry& entry(const std::string& name) const;
  const SafetensorsFile& shard_of(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;  // a view of the mapping
  void release(const std::string& name) const { shard_of(name).release(name); }  // after copying it
  // Names the source of a tensor in errors: the shard's path.
  std::string file_of(const std::string& name) const { return shard_of(name).path(); }
  std::optional<std::uint64_t> declared_total_size() const { return declared_total_size_; }
  // The file that lists the tensors: the shard index, or the single weights file.
  std::string listing_path() const { return index_path_ ? index_path_->string() : shards_.front().path(); }

 private:
  std::vector<SafetensorsFile> shards_;
  std::unordered_map<std::string, std::size_t> where_;  // tensor -> shard
  std::optional<std::filesystem::path> index_path_;
  std::optional<std::uint64_t> declared_total_size_;
};

// model.safetensors, model.safetensors.index.json or a model-0000k-of-0000n.safetensors shard.
bool is_weights_file(const std::string& file_name);

// save_pretrained's default max_shard_size ("5GB"): a checkpoint above it is written as shards.
inline constexpr std::uint64_t kDefaultMaxShardBytes = 5'000'000'000;

// Writes `tensors` into `dir` as Hugging Face lays out weights: model.safetensors when they fit in
// `max_shard_bytes`, else model-0000k-of-0000n.safetensors shards filled in the given order (a tensor
// larger than the limit gets a shard of its own) and model.safetensors.index.json (written last). Each
// file carries `metadata`. Weight files of an earlier layout in `dir` are removed. `written` as in
// write_safetensors, so tensors viewing a mapping stream through one tensor at a time.
void write_checkpoint(const std::filesystem::path& dir, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata,
                      std::uint64_t max_shard_bytes = kDefaultMaxShardBytes, const WrittenFn& written = {});
// The same for tensors computed as they are written (DeferredTensor).
void write_checkpoint(const std::filesystem::path& dir, const DeferredTensors& tensors,
                      const std::map<std::string, std::string>& metadata,
                      std::uint64_t max_shard_bytes = kDefaultMaxShardBytes, const WrittenFn& written = {});

}  // namespace linearize
