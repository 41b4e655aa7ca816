// safetensors files as LibTorch tensors: reading maps the file and hands out views of the mapping (no
// copy); writing streams tensors into an atomically renamed file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "formats/mapped_file.h"
#include "formats/safetensors_header.h"

namespace linearize {

// The dtypes that become tensors: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
bool dtype_is_loadable(DType dtype);
c10::ScalarType to_scalar_type(DType dtype);
DType from_scalar_type(c10::ScalarType type);

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorEntry* find(const std::string& name) const;
  std::vector<std::string> names() const;  // in data order
  std::uint64_t file_size() const { return file_->size(); }

  // A read-only CPU tensor viewing the mapping (it keeps the mapping alive; an in-place op on it faults:
  // clone() or .to() what you modify). Copies only if the data is not aligned
  // to its element size, which our writer and the reference writer never produce.
  at::Tensor tensor(const std::string& name) const;
  // Lets the process drop the mapped pages of a tensor it has copied (MappedFile::release).
  void release(const std::string& name) const;

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header);
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, std::size_t> index_;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes tensors sorted by descending alignment then name (as the reference writer does), the header
// padded to 8 bytes, through a temporary file renamed into place. `written` is called with each tensor's
// name and byte count once its bytes are in the file (a caller streaming from a mapping releases its pages
// there, and can show progress).
using WrittenFn = std::function<void(const std::string& name, std::uint64_t bytes)>;
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {}, const WrittenFn& written = {});

// A tensor computed only when its bytes are due (its dtype and shape declared for the header), so a writer of
// derived tensors holds one of them at a time, not all of them (export-native's fused and repeated rows).
struct DeferredTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::function<at::Tensor()> value;  // called once, as the file reaches it; must match dtype and shape

  std::uint64_t nbytes() const;
};
using DeferredTensors = std::vector<DeferredTensor>;
DeferredTensors deferred(const NamedTensors& tensors);  // each tensor handed back as it is
void write_safetensors(const std::filesystem::path& path, const DeferredTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {}, const WrittenFn& written = {});

}  // namespace linearize
