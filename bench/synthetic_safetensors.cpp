#include "bench/synthetic_safetensors.h"

#include <ATen/ops/arange.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "formats/safetensors.h"

#ifndef LINEARIZE_BENCH_DEFAULT_DIR
#define LINEARIZE_BENCH_DEFAULT_DIR "."
#endif

namespace linearize::bench {
namespace {

constexpr const char* kProjections[] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "self_attn.feature_map", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};
constexpr std::int64_t kPerLayer = static_cast<std::int64_t>(std::size(kProjections));

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& path) {
  throw std::runtime_error(what + " " + path.string() + ": " + std::strerror(errno));
}

bool matches(const std::filesystem::path& path, const SyntheticSpec& spec) {
  try {
    const auto file = SafetensorsFile::open(path);
    if (static_cast<std::int64_t>(file.header().tensors.size()) != spec.tensors) return false;
    for (std::int64_t i = 0; i < spec.tensors; ++i) {
      const TensorEntry* e = file.find(spec.tensor_name(i));
      if (e == nullptr || e->dtype != DType::F32 || e->shape != std::vector<std::int64_t>{spec.rows, spec.cols})
        return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::string SyntheticSpec::tensor_name(std::int64_t i) const {
  return "model.layers." + std::to_string(i / kPerLayer) + "." + kProjections[i % kPerLayer] + ".weight";
}

SyntheticSpec spec_from_env() {
  SyntheticSpec spec;
  if (const char* mb = std::getenv("LINEARIZE_BENCH_MB")) {
    const long long value = std::atoll(mb);
    if (value <= 0 || value % 8 != 0) throw std::invalid_argument("LINEARIZE_BENCH_MB must be a positive multiple of 8");
    spec.tensors = value / 8;
  }
  return spec;
}

std::filesystem::path bench_dir() {
  const char* dir = std::getenv("LINEARIZE_BENCH_DIR");
  return dir != nullptr && *dir != '\0' ? std::filesystem::path(dir) : std::filesystem::path(LINEARIZE_BENCH_DEFAULT_DIR);
}

std::filesystem::path ensure_synthetic_safetensors(const std::filesystem::path& dir, const SyntheticSpec& spec) {
  std::filesystem::create_directories(dir);
  const auto path = dir / ("synthetic-" + std::to_string(spec.data_bytes() >> 20) + "MiB.safetensors");
  if (std::filesystem::exists(path) && matches(path, spec)) return path;

  // Each tensor is one 4 KiB row broadcast over all rows (stride 0); write_safetensors makes it
  // contiguous one tensor at a time, so writing 2 GiB needs 8 MiB of memory, not 2 GiB.
  NamedTensors tensors;
  tensors.reserve(static_cast<std::size_t>(spec.tensors));
  for (std::int64_t i = 0; i < spec.tensors; ++i) {
    at::Tensor row = at::arange(spec.cols, at::kFloat).add_(static_cast<double>(i));
    tensors.emplace_back(spec.tensor_name(i), row.expand({spec.rows, spec.cols}));
  }
  write_safetensors(path, tensors, {{"format", "pt"}, {"generator", "linearize bench"}});
  return path;
}

void warm_page_cache(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open", path);
  std::vector<char> buffer(8 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      fail("cannot read", path);
    }
    if (n == 0) break;
  }
  ::close(fd);
}

double page_cache_resident_fraction(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return 0.0;
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot mmap", path);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  const int rc = ::mincore(p, size, resident.data());
  ::munmap(p, size);
  if (rc != 0) fail("mincore failed on", path);
  std::size_t in_cache = 0;
  for (unsigned char r : resident) in_cache += r & 1U;
  return static_cast<double>(in_cache) / static_cast<double>(resident.size());
}

std::string libtorch_version() { return LINEARIZE_LIBTORCH_VERSION; }

}  // namespace linearize::bench
