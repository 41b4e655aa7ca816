// The synthetic checkpoint the benchmarks read: F32 tensors named like a decoder's layers, written by
// our own write_safetensors and reused across runs while its header still matches.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace linearize::bench {

struct SyntheticSpec {
  std::int64_t tensors = 256;  // 32 layers x 8 projections
  std::int64_t rows = 2048;    // 2048 x 1024 F32 = 8 MiB a tensor, 2 GiB in all
  std::int64_t cols = 1024;

  std::uint64_t data_bytes() const { return static_cast<std::uint64_t>(tensors * rows * cols) * 4; }
  std::string tensor_name(std::int64_t i) const;
};

// The default spec, scaled by $LINEARIZE_BENCH_MB (MiB of tensor data, a multiple of 8; default 2048).
SyntheticSpec spec_from_env();

// $LINEARIZE_BENCH_DIR, else the build's bench folder.
std::filesystem::path bench_dir();

// Returns the path of the synthetic file in `dir`, writing it first unless a file with the same tensors
// is already there. Writing holds one tensor (8 MiB) at a time.
std::filesystem::path ensure_synthetic_safetensors(const std::filesystem::path& dir, const SyntheticSpec& spec);

// Reads the whole file through a small buffer, so its pages are in the page cache.
void warm_page_cache(const std::filesystem::path& path);

// Fraction of the file's pages in the page cache (mincore), 0 to 1.
double page_cache_resident_fraction(const std::filesystem::path& path);

// The LibTorch the benchmarks were compiled against, e.g. "2.4.1".
std::string libtorch_version();

}  // namespace linearize::bench
