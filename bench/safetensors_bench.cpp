// Opening a ~2 GiB safetensors file: the cost of mapping it, validating it and touching every tensor
// (a view plus a read of its first element, no copy) against the floor of mapping it and parsing its
// header. Both sides read a file that is in the page cache (the context says how much of it is).
//
//   safetensors_bench [--benchmark_out=FILE --benchmark_out_format=json ...]
//   env: LINEARIZE_BENCH_DIR (where the file lives), LINEARIZE_BENCH_MB (its size, default 2048)
#include <benchmark/benchmark.h>

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "bench/synthetic_safetensors.h"
#include "formats/mapped_file.h"
#include "formats/safetensors.h"
#include "formats/safetensors_header.h"
#include "formats/sha256.h"

namespace {

using linearize::MappedFile;
using linearize::SafetensorsFile;
using Clock = std::chrono::steady_clock;

struct Workload {
  std::string path;
  std::uint64_t file_bytes = 0;
  std::int64_t tensors = 0;
};

// The baseline: map the file and parse (and validate) its header; no tensor, no page of data touched.
std::size_t map_and_read_header(const std::string& path) {
  const auto file = MappedFile::open(path);
  const auto header = linearize::parse_safetensors_header(file->data(), file->size(), file->path());
  benchmark::DoNotOptimize(header.tensors.data());
  return header.tensors.size();
}

// Everything a reader does before using weights: open (map + validate), then for every tensor a view of
// the mapping and a read of its first element.
float open_validate_touch(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  float first_elements = 0.0F;
  for (const auto& entry : file.header().tensors) {
    const at::Tensor t = file.tensor(entry.name);
    first_elements += *t.const_data_ptr<float>();
  }
  benchmark::DoNotOptimize(first_elements);
  return first_elements;
}

// Breakdown of the above, for reading where the time goes: open (map + validate) alone, and open plus a
// view of every tensor without reading from it.
std::size_t open_validate(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  benchmark::DoNotOptimize(file.header().tensors.data());
  return file.header().tensors.size();
}

std::size_t open_validate_views(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  std::size_t views = 0;
  for (const auto& entry : file.header().tensors) {
    const at::Tensor t = file.tensor(entry.name);
    benchmark::DoNotOptimize(t.unsafeGetTensorImpl());
    ++views;
  }
  return views;
}

// SHA-256 of the whole mapped file (what convert records per source shard and per copied tensor, and what
// verify's L0 recomputes), from the page cache.
std::string hash_file(const std::string& path) {
  const auto file = MappedFile::open(path);
  return linearize::sha256_hex(file->data(), file->size());
}

void set_throughput(benchmark::State& state, const Workload& w) {
  const auto iterations = static_cast<std::int64_t>(state.iterations());
  state.SetBytesProcessed(iterations * static_cast<std::int64_t>(w.file_bytes));
  state.counters["tensors_per_second"] =
      benchmark::Counter(static_cast<double>(iterations * w.tensors), benchmark::Counter::kIsRate);
}

void BM_Sha256MappedFile(benchmark::State& state, const Workload& w) {
  for (auto _ : state) benchmark::DoNotOptimize(hash_file(w.path));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(w.file_bytes));
}

void BM_MapAndReadHeader(benchmark::State& state, const Workload& w) {
  for (auto _ : state) benchmark::DoNotOptimize(map_and_read_header(w.path));
  set_throughput(state, w);
}

void BM_OpenValidateTouchEveryTensor(benchmark::State& state, const Workload& w) {
  for (auto _ : state) benchmark::DoNotOptimize(open_validate_touch(w.path));
  set_throughput(state, w);
}

void BM_OpenValidate(benchmark::State& state, const Workload& w) {
  for (auto _ : state) benchmark::DoNotOptimize(open_validate(w.path));
  set_throughput(state, w);
}

void BM_OpenValidateViews(benchmark::State& state, const Workload& w) {
  for (auto _ : state) benchmark::DoNotOptimize(open_validate_views(w.path));
  set_throughput(state, w);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

// Both operations interleaved in each iteration, so a noisy neighbour hits both alike; the counters hold
// their medians (microseconds) and the ratio touch / header.
void BM_TouchVsHeaderRatio(benchmark::State& state, const Workload& w) {
  std::vector<double> header_us, touch_us;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    benchmark::DoNotOptimize(map_and_read_header(w.path));
    const auto t1 = Clock::now();
    benchmark::DoNotOptimize(open_validate_touch(w.path));
    const auto t2 = Clock::now();
    header_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    touch_us.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
    state.SetIterationTime(std::chrono::duration<double>(t2 - t0).count());
  }
  const double header = median(header_us), touch = median(touch_us);
  state.counters["header_us"] = header;
  state.counters["touch_us"] = touch;
  state.counters["ratio"] = header > 0 ? touch / header : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;

  Workload w;
  try {
    const auto spec = linearize::bench::spec_from_env();
    const auto path = linearize::bench::ensure_synthetic_safetensors(linearize::bench::bench_dir(), spec);
    const double cached_before = linearize::bench::page_cache_resident_fraction(path);
    linearize::bench::warm_page_cache(path);
    const double cached = linearize::bench::page_cache_resident_fraction(path);
    const auto file = SafetensorsFile::open(path);
    w.path = path.string();
    w.file_bytes = file.file_size();
    w.tensors = static_cast<std::int64_t>(file.header().tensors.size());

    benchmark::AddCustomContext("file", w.path);
    benchmark::AddCustomContext("file_bytes", std::to_string(w.file_bytes));
    benchmark::AddCustomContext("tensors", std::to_string(w.tensors));
    benchmark::AddCustomContext("page_cache_resident_at_start", std::to_string(cached_before));
    benchmark::AddCustomContext("page_cache_resident", std::to_string(cached));
    benchmark::AddCustomContext("libtorch", linearize::bench::libtorch_version());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "safetensors_bench: %s\n", e.what());
    return 3;
  }

  benchmark::RegisterBenchmark("BM_MapAndReadHeader", BM_MapAndReadHeader, w)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("BM_OpenValidateTouchEveryTensor", BM_OpenValidateTouchEveryTensor, w)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("BM_OpenValidate", BM_OpenValidate, w)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("BM_OpenValidateViews", BM_OpenValidateViews, w)->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("BM_Sha256MappedFile", BM_Sha256MappedFile, w)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("BM_TouchVsHeaderRatio", BM_TouchVsHeaderRatio, w)
      ->UseManualTime()
      ->MinTime(2.0)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
