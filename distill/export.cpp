#include "distill/export.h"

#include <algorithm>
#include <map>
#include <string>

#include "converter/linearized.h"
#include "converter/names.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/json_file.h"
#include "formats/peft_adapter.h"

namespace linearize {
namespace fs = std::filesystem;

void export_model(const fs::path& converted, const fs::path& out, const NamedTensors& trained,
                  const std::vector<std::shared_ptr<LoraLinear>>& adapters, const RunConfig& config) {
  fs::create_directories(out);
  fs::remove(out / "config.json");
  fs::remove_all(out / kPeftAdapterDir);
  for (const auto& entry : fs::directory_iterator(converted)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "config.json" || name == kVerifyLogitsFile || name == kVerifyReportFile ||
        is_weights_file(name))
      continue;
    fs::copy_file(entry.path(), out / name, fs::copy_options::overwrite_existing);
  }
  const bool merge = config.stage2.merge && !adapters.empty();
  std::map<std::string, at::Tensor> replaced;
  for (const auto& [name, tensor] : trained) replaced[name] = tensor;
  nlohmann::json merged_names = nlohmann::json::array();
  if (merge) {
    for (const auto& lora : adapters) {
      replaced[names::weight_of(lora->path())] = lora->merge();
      merged_names.push_back(names::weight_of(lora->path()));
    }
  }
  const auto weights = CheckpointWeights::open(converted);
  auto metadata = weights.shards().front().metadata();
  if (merge) {
    auto copied = nlohmann::json::parse(metadata.at(kCopiedTensorsMetadataKey));
    for (const auto& name : merged_names) copied.erase(name.get<std::string>());
    metadata[kCopiedTensorsMetadataKey] = copied.dump();
  }
  NamedTensors tensors;
  std::uint64_t largest_shard = 0;
  for (const auto& shard : weights.shards()) {
    largest_shard = std::max<std::uint64_t>(largest_shard, shard.file_size());
    for (const auto& name : shard.names()) {
      at::Tensor value = shard.tensor(name);
      if (const auto it = replaced.find(name); it != replaced.end())
        value = it->second.detach().to(at::kCPU, value.scalar_type()).contiguous();
      tensors.emplace_back(name, value);
    }
  }
  // The conversion's layout (sharded when it was), its mapped pages released as they are written.
  write_checkpoint(out, tensors, metadata, weights.sharded() ? largest_shard : kDefaultMaxShardBytes,
                   [&](const std::string& name, std::uint64_t) { weights.release(name); });
  auto model_config = read_json_file(converted / "config.json");
  if (merge) {
    const auto& lora = config.stage2.lora;
    model_config["linearize"]["lora_merged"] = {
        {"r", lora.r}, {"alpha", lora.alpha}, {"rslora", lora.rslora}, {"tensors", merged_names}};
  } else if (!adapters.empty()) {
    PeftAdapter adapter;
    const auto& lora = config.stage2.lora;
    adapter.config = {lora.r, lora.alpha, lora.dropout, lora.rslora, lora.targets, out.string()};
    for (const auto& module : adapters) adapter.modules.push_back(module->to_peft());
    write_peft_adapter(out / kPeftAdapterDir, adapter);
  }
  write_file_atomic(out / "config.json", model_config.dump(2) + "\n");
}

VerifyReport verify_export(const fs::path& out, const RunConfig& config) {
  VerifyOptions verify;
  verify.thresholds = config.verify;
  return record_and_verify(out, fs::path(config.model), verify);
}

}  // namespace linearize
