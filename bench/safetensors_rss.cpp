// Peak resident memory when a safetensors file becomes tensors and every byte of them is read: opens
// the file, makes a view of every tensor, sums each one (so every page is touched) and keeps them all
// alive to the end, then prints one JSON object. Run it in a fresh process: the peak is the process's.
//
//   safetensors_rss [FILE]   (default: the synthetic file of safetensors_bench, written if missing)
#include <ATen/core/Tensor.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/synthetic_safetensors.h"
#include "formats/safetensors.h"

namespace {

// A "VmHWM:   1234 kB" style line of /proc/self/status, in bytes; -1 when absent.
std::int64_t proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t rss_at_start = proc_status_bytes("VmRSS");  // LibTorch's libraries loaded, nothing run
  try {
    if (argc > 2) {
      std::fprintf(stderr, "usage: safetensors_rss [FILE]\n");
      return 2;
    }
    const std::string path = argc == 2 ? std::string(argv[1])
                                       : linearize::bench::ensure_synthetic_safetensors(
                                             linearize::bench::bench_dir(), linearize::bench::spec_from_env())
                                             .string();
    // The process's own footprint (LibTorch loaded and initialised) before the file is opened: the peak
    // minus this is what reading the file added.
    (void)at::zeros({1}).sum().item<double>();
    const std::int64_t rss_before_open = proc_status_bytes("VmRSS");
    const double cached = linearize::bench::page_cache_resident_fraction(path);

    const auto file = linearize::SafetensorsFile::open(path);
    std::vector<at::Tensor> tensors;
    tensors.reserve(file.header().tensors.size());
    double checksum = 0.0;
    for (const auto& entry : file.header().tensors) {
      tensors.push_back(file.tensor(entry.name));
      checksum += at::sum(tensors.back()).item<double>();  // in F32: no upcast copy
    }

    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const auto file_size = static_cast<std::int64_t>(file.file_size());
    const std::int64_t vm_hwm = proc_status_bytes("VmHWM");
    const std::int64_t ru_maxrss = static_cast<std::int64_t>(usage.ru_maxrss) * 1024;
    const std::int64_t peak = std::max(vm_hwm, ru_maxrss);
    nlohmann::json out = {
        {"file", path},
        {"file_size", file_size},
        {"tensors", tensors.size()},
        {"page_cache_resident_at_open", cached},
        {"rss_at_start", rss_at_start},
        {"rss_before_open", rss_before_open},
        {"peak_rss_vmhwm", vm_hwm},
        {"peak_rss_ru_maxrss", ru_maxrss},
        {"rss_anon_at_end", proc_status_bytes("RssAnon")},
        {"rss_file_at_end", proc_status_bytes("RssFile")},
        {"peak_rss", peak},
        {"ratio", static_cast<double>(peak) / static_cast<double>(file_size)},
        {"added_by_reading", peak - rss_before_open},
        {"added_ratio", static_cast<double>(peak - rss_before_open) / static_cast<double>(file_size)},
        {"checksum", checksum},
        {"libtorch", linearize::bench::libtorch_version()},
    };
    std::cout << out.dump(2) << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_rss: %s\n", e.what());
    return 3;
  }
}
