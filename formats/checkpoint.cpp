#include "formats/checkpoint.h"

#include <algorithm>
#include <map>

#include <cstdio>
#include <regex>

#include <nlohmann/json.hpp>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "formats/json_file.h"

namespace linearize {

CheckpointWeights CheckpointWeights::open(const std::filesystem::path& dir) {
  CheckpointWeights out;
  const auto single = dir / kSingleWeightsFile;
  const auto index = dir / kShardIndexFile;
  // transformers prefers the single file when both exist; so do we.
  if (std::filesystem::exists(single)) {
    out.shards_.push_back(SafetensorsFile::open(single));
    for (const auto& t : out.shards_[0].header().tensors) out.where_.emplace(t.name, 0);
    return out;
  }
  if (!std::filesystem::exists(index))
    throw InputError(dir.string(), "weights", std::string("no ") + kSingleWeightsFile + " or " + kShardIndexFile + " in this directory");

  out.index_path_ = index;
  const std::string index_name = index.string();
  const auto doc = read_json_file(index);
  const JsonObject root(doc, index_name);
  if (const auto meta = root.get_optional_object("metadata")) {
    if (const auto total = meta->get_optional_int("total_size")) {
      if (*total < 0) meta->fail("total_size", "is negative");
      out.declared_total_size_ = static_cast<std::uint64_t>(*total);
    }
  }
  const auto map_obj = root.get_optional_object("weight_map");
  if (!map_obj) root.fail("weight_map", "required key is missing");

  std::map<std::string, std::size_t> shard_ids;  // file name -> position in shards_
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, file] : map_obj->raw().items()) {
    if (!file.is_string()) map_obj->fail(tensor, "shard name is not a string");
    const auto name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      map_obj->fail(tensor, "shard name '" + name + "' is not a file name in this directory");
    weight_map.emplace(tensor, name);
    shard_ids.emplace(name, 0);
  }
  if (weight_map.empty()) map_obj->fail("", "is empty");

  for (auto& [name, id] : shard_ids) {
    const auto path = dir / name;
    if (!std::filesystem::exists(path)) throw InputError(index_name, "weight_map", "names shard '" + name + "', which does not exist");
    id = out.shards_.size();
    out.shards_.push_back(SafetensorsFile::open(path));
  }
  // Index -> shards: every listed tensor is in the shard the index names.
  for (const auto& [tensor, file] : weight_map) {
    const auto& shard = out.shards_[shard_ids[file]];
    if (shard.find(tensor) == nullptr)
      throw InputError(index_name, "weight_map." + tensor, "shard '" + file + "' has no such tensor");
    out.where_.emplace(tensor, shard_ids[file]);
  }
  // Shards -> index: no shard holds a tensor the index does not list for it.
  for (const auto& [file, id] : shard_ids) {
    for (const auto& t : out.shards_[id].header().tensors) {
      const auto it = weight_map.find(t.name);
      if (it == weight_map.end())
        throw InputError(out.shards_[id].path(), "tensor '" + t.name + "'", "is not listed in " + std::string(kShardIndexFile));
      if (it->second != file)
        throw InputError(out.shards_[id].path(), "tensor '" + t.name + "'", "is also here, but the index maps it to '" + it->second + "'");
    }
  }
  return out;
}

std::vector<std::string> CheckpointWeights::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, _] : where_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsFile& CheckpointWeights::shard_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw std::out_of_range("no tensor '" + name + "' in the checkpoint");
  return shards_[it->second];
}

const TensorEntry& CheckpointWeights::entry(const std::string& name) const { return *shard_of(name).find(name); }

at::Tensor CheckpointWeights::tensor(const std::string& name) const { return shard_of(name).tensor(name); }

namespace {
const std::regex& shard_file_name() {
  static const std::regex pattern(R"(model-\d{5}-of-\d{5}\.safetensors)");
  return pattern;
}
}  // namespace

bool is_weights_file(const std::string& file_name) {
  return file_name == kSingleWeightsFile || file_name == kShardIndexFile || std::regex_match(file_name, shard_file_name());
}

void write_checkpoint(const std::filesystem::path& dir, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata, std::uint64_t max_shard_bytes,
                      const WrittenFn& written) {
  write_checkpoint(dir, deferred(tensors), metadata, max_shard_bytes, written);
}

void write_checkpoint(const std::filesystem::path& dir, const DeferredTensors& tensors,
                      const std::map<std::string, std::string>& metadata, std::uint64_t max_shard_bytes,
                      const WrittenFn& written) {
  std::vector<DeferredTensors> shards(1);
  std::uint64_t shard_bytes = 0, total = 0;
  for (const auto& entry : tensors) {
    const auto bytes = entry.nbytes();
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(entry);
    shard_bytes += bytes;
    total += bytes;
  }
  // The layout written before, whatever it was, goes first: the index last, so a reader never finds an
  // index naming shards of another layout.
  std::filesystem::remove(dir / kShardIndexFile);
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (std::regex_match(entry.path().filename().string(), shard_file_name())) std::filesystem::remove(entry.path());
  if (shards.size() == 1) {
    write_safetensors(dir / kSingleWeightsFile, shards.front(), metadata, written);
    return;
  }
  std::filesystem::remove(dir / kSingleWeightsFile);
  nlohmann::ordered_json weight_map;
  for (std::size_t k = 0; k < shards.size(); ++k) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    write_safetensors(dir / file, shards[k], metadata, written);
    for (const auto& t : shards[k]) weight_map[t.name] = file;
  }
  const nlohmann::ordered_json index{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic(dir / kShardIndexFile, index.dump(2) + "\n");
}

}  // namespace linearize
