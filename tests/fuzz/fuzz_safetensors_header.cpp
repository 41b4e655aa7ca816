// libFuzzer target for the safetensors header parser (formats/safetensors_header.h).
//
// The input is a whole file. InputError is the expected rejection; any other exception, a crash or a
// sanitizer report is a bug. For an accepted file it also checks what the parser promises (offsets tile
// the buffer exactly and in order, byte counts match dtype and shape, the buffer starts at 8 + N) and that
// serialising the header and parsing it again gives the same header back.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <set>
#include <string>

#include "formats/error.h"
#include "formats/safetensors_header.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "fuzz_safetensors_header: invariant violated: %s%s%s\n", what, detail.empty() ? "" : ": ",
               detail.c_str());
  std::abort();
}

#define CHECK(cond, ...) \
  do {                   \
    if (!(cond)) fail(#cond, ##__VA_ARGS__); \
  } while (0)

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
  return n;
}

void check_invariants(const linearize::SafetensorsHeader& h, const std::uint8_t* data, std::size_t size) {
  CHECK(size >= 8);
  const std::uint64_t n = read_u64_le(data);
  CHECK(n <= linearize::kMaxSafetensorsHeaderBytes);
  CHECK(h.data_start == 8 + n);
  CHECK(h.data_start <= size);
  CHECK(data[8] == '{');
  const std::uint64_t buffer_size = size - h.data_start;

  std::set<std::string> names;
  std::uint64_t expected = 0;
  for (const auto& t : h.tensors) {
    CHECK(!t.name.empty());
    CHECK(t.name != "__metadata__", t.name);
    CHECK(names.insert(t.name).second, "duplicate tensor " + t.name);
    CHECK(t.begin == expected, t.name);  // sorted, contiguous from 0, no hole, no overlap
    CHECK(t.end >= t.begin, t.name);
    CHECK(t.end <= buffer_size, t.name);
    expected = t.end;

    std::uint64_t numel = 1;
    for (auto d : t.shape) {
      CHECK(d >= 0, t.name);
      CHECK(!__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel), t.name);
    }
    CHECK(numel == t.numel(), t.name);
    const int bits = linearize::dtype_bits(t.dtype);
    CHECK(bits == 4 || bits == 6 || bits == 8 || bits == 16 || bits == 32 || bits == 64);
    std::uint64_t total_bits = 0;
    CHECK(!__builtin_mul_overflow(numel, static_cast<std::uint64_t>(bits), &total_bits), t.name);
    CHECK(total_bits % 8 == 0, t.name);
    CHECK(t.nbytes() == total_bits / 8, t.name);

    linearize::DType back{};
    CHECK(linearize::dtype_from_name(linearize::dtype_name(t.dtype), &back) && back == t.dtype);
    CHECK(h.find(t.name) == &t, t.name);
  }
  CHECK(expected == buffer_size, "last tensor does not end the buffer");
  CHECK(h.find("") == nullptr);
}

bool same(const linearize::SafetensorsHeader& a, const linearize::SafetensorsHeader& b) {
  if (a.metadata != b.metadata || a.tensors.size() != b.tensors.size()) return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const auto& x = a.tensors[i];
    const auto& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin || x.end != y.end) return false;
  }
  return true;
}

// serialize_safetensors_header + the same data buffer must parse back to the same header, with the
// buffer 8-byte aligned.
void check_round_trip(const linearize::SafetensorsHeader& h, const std::uint8_t* data, std::size_t size) {
  std::string file = linearize::serialize_safetensors_header(h.tensors, h.metadata);
  CHECK(file.size() % 8 == 0);
  const std::uint64_t header_end = file.size();
  file.append(reinterpret_cast<const char*>(data + h.data_start), size - h.data_start);
  linearize::SafetensorsHeader again;
  try {
    again = linearize::parse_safetensors_header(reinterpret_cast<const std::uint8_t*>(file.data()), file.size(),
                                                "<round-trip>");
  } catch (const linearize::InputError& e) {
    fail("serialised header rejected", e.what());
  }
  CHECK(again.data_start == header_end);
  CHECK(same(h, again));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  linearize::SafetensorsHeader header;
  try {
    header = linearize::parse_safetensors_header(data, size, "<fuzz>");
  } catch (const linearize::InputError&) {
    return 0;  // rejected, as it should be
  } catch (const std::exception& e) {
    fail("exception other than InputError", e.what());
  } catch (...) {
    fail("non-std exception");
  }
  check_invariants(header, data, size);
  try {
    check_round_trip(header, data, size);
  } catch (const std::exception& e) {
    fail("exception while round-tripping", e.what());
  }
  return 0;
}
