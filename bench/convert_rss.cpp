// What converting a large checkpoint costs: wall time, peak resident memory against the bound the issue
// sets (largest source shard + one layer's tensors + 10%, over the process's own footprint) and the
// write rate. Runs convert_checkpoint alone (no verification) in a fresh process, then prints one JSON
// object. The source is a scripts/make_synthetic_checkpoint.py directory (Llama-3-8B-shaped by default).
//
//   convert_rss SOURCE OUT [RECIPE]   (RECIPE default lolcats; OUT is overwritten)
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/names.h"
#include "formats/checkpoint.h"

namespace {

// A "VmHWM:   1234 kB" style line of /proc/self/status, in bytes; -1 when absent.
std::int64_t proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.compare(0, key.size() + 1, key + ":") == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: convert_rss SOURCE OUT [RECIPE]\n");
    return 2;
  }
  try {
    (void)at::zeros({1}).sum().item<double>();  // LibTorch initialised: the footprint before the work
    const std::int64_t rss_before = proc_status_bytes("VmRSS");
    linearize::ConvertOptions options;
    options.source = argv[1];
    options.out = argv[2];
    options.recipe = argc == 4 ? argv[3] : "lolcats";
    options.force = true;

    // The bound's terms: the largest shard file, and the largest layer's tensors (bytes as stored).
    std::uint64_t largest_shard = 0;
    std::map<std::int64_t, std::uint64_t> layer_bytes;
    {
      const auto source = linearize::CheckpointWeights::open(options.source);
      for (const auto& shard : source.shards()) largest_shard = std::max<std::uint64_t>(largest_shard, shard.file_size());
      for (const auto& name : source.names())
        if (const auto layer = linearize::names::layer_of(name))
          layer_bytes[*layer] += source.entry(name).end - source.entry(name).begin;
    }
    std::uint64_t largest_layer = 0;
    for (const auto& [layer, bytes] : layer_bytes) largest_layer = std::max(largest_layer, bytes);

    const auto started = std::chrono::steady_clock::now();
    const auto result = linearize::convert_checkpoint(options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    std::uint64_t written = 0;
    for (const auto& entry : std::filesystem::directory_iterator(options.out))
      if (linearize::is_weights_file(entry.path().filename().string())) written += std::filesystem::file_size(entry.path());
    const std::int64_t peak = proc_status_bytes("VmHWM");
    const double bound = 1.1 * static_cast<double>(largest_shard + largest_layer);
    nlohmann::json out = {
        {"source", options.source.string()},
        {"recipe", options.recipe},
        {"layers_converted", result.converted_layers},
        {"seconds", seconds},
        {"bytes_written", written},
        {"write_gb_per_s", static_cast<double>(written) / seconds / 1e9},
        {"rss_before", rss_before},
        {"peak_rss", peak},
        {"added_by_convert", peak - rss_before},
        {"largest_shard", largest_shard},
        {"largest_layer", largest_layer},
        {"bound", bound},
        {"added_over_bound", static_cast<double>(peak - rss_before) / bound},
    };
    std::cout << out.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "convert_rss: %s\n", e.what());
    return 3;
  }
}
