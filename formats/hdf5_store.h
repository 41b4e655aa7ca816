// HDF5 activation stores (docs/formats.md#hdf5-stores): named datasets of [N, ...row] tensors (e.g. layer inputs
// [N, T, D] for block-wise attention transfer, golden references; int32 for ids), fp32, bf16 or int32, written row-block by
// row-block and read back by row range. bf16 is stored as uint16 bit patterns with the attribute
// dtype = "bf16" (HDF5 has no bf16 type), so h5py sees uint16 and can view them as bf16 itself.
// The file is written under `<path>.tmp` and renamed into place by close(): a reader never sees a half
// file. Errors are InputErrors naming the file and the dataset.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace linearize {

class Hdf5Writer {
 public:
  explicit Hdf5Writer(std::filesystem::path path);
  ~Hdf5Writer();  // without close(): the temporary file is removed and nothing appears at `path`
  Hdf5Writer(const Hdf5Writer&) = delete;
  Hdf5Writer& operator=(const Hdf5Writer&) = delete;

  // `dtype` kFloat, kBFloat16 or kInt; `row_shape` the shape of one row (e.g. {T, D}).
  void create_dataset(const std::string& name, at::ScalarType dtype, const std::vector<std::int64_t>& row_shape);
  // Appends rows [n, row_shape...] of the dataset's dtype (any device; copied to the CPU).
  void append(const std::string& name, const at::Tensor& rows);
  // Flushes, closes, fsyncs and renames into place.
  void close();

 private:
  struct Dataset {
    std::int64_t id;
    at::ScalarType dtype;
    std::vector<std::int64_t> row_shape;
    std::int64_t rows = 0;
  };
  void release();

  std::filesystem::path path_, temp_;
  std::int64_t file_ = -1;
  std::map<std::string, Dataset> datasets_;
};

class Hdf5Reader {
 public:
  explicit Hdf5Reader(std::filesystem::path path);
  ~Hdf5Reader();
  Hdf5Reader(const Hdf5Reader&) = delete;
  Hdf5Reader& operator=(const Hdf5Reader&) = delete;

  std::vector<std::string> names() const;  // sorted
  at::ScalarType dtype(const std::string& name) const;
  std::vector<std::int64_t> shape(const std::string& name) const;  // [N, row_shape...]
  // Rows [begin, end) as a CPU tensor [end - begin, row_shape...].
  at::Tensor read(const std::string& name, std::int64_t begin, std::int64_t end) const;

 private:
  std::int64_t open_dataset(const std::string& name) const;

  std::filesystem::path path_;
  std::int64_t file_ = -1;
};

}  // namespace linearize
