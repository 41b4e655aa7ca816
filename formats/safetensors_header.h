// The safetensors header: parsing with full validation, and serialising. No tensor library here, so the
// parser can be fuzzed on its own (tests/fuzz).
//
// Layout (docs/formats.md#safetensors): u64 little-endian N, N bytes of UTF-8 JSON starting with '{'
// (right-padded with spaces), then the data buffer. Offsets are relative to the buffer, END exclusive,
// and must tile the buffer exactly: contiguous from 0, no holes, no overlap, nothing after the last.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace linearize {

// Every dtype of the safetensors format, so byte counts of any valid file validate; only some of them
// can become tensors (see safetensors.h).
enum class DType {
  BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64,
  F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F4, F6_E2M3, F6_E3M2, C64,
};

const char* dtype_name(DType dtype);
// Size in bits (4 and 6 for the sub-byte floats).
int dtype_bits(DType dtype);
// Returns false for a string that names no safetensors dtype.
bool dtype_from_name(const std::string& name, DType* out);

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // offsets into the data buffer, end exclusive
  std::uint64_t end = 0;

  std::uint64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // sorted by data offset
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;  // 8 + N: where the buffer begins in the file

  const TensorEntry* find(const std::string& name) const;
};

inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;  // safetensors MAX_HEADER_SIZE

// Validates the whole file layout against `file_size` bytes at `file`. Throws InputError naming `path`
// and the offending field.
SafetensorsHeader parse_safetensors_header(const std::uint8_t* file, std::size_t file_size, const std::string& path);

// Serialises `tensors` (whose offsets must already tile the buffer) as the 8-byte length plus the JSON
// header padded with spaces to a multiple of 8 bytes, so the buffer starts 8-byte aligned.
std::string serialize_safetensors_header(const std::vector<TensorEntry>& tensors,
                                         const std::map<std::string, std::string>& metadata);

}  // namespace linearize
