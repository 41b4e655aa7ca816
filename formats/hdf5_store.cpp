#include "formats/hdf5_store.h"

#include <ATen/ATen.h>
#include <hdf5.h>

#include <functional>
#include <system_error>
#include <type_traits>

#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize {
namespace {

namespace fs = std::filesystem;
static_assert(std::is_same_v<hid_t, std::int64_t>, "the header keeps HDF5 ids as int64_t (hid_t since HDF5 1.10)");

constexpr const char* kDtypeAttribute = "dtype";
constexpr int kMaxRank = 8;

// HDF5 prints its error stack to stderr by default; we turn its innermost message into our error instead.
void silence_hdf5() {
  static const bool silenced = [] { return H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0; }();
  (void)silenced;
}

std::string hdf5_message() {
  std::string message;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, [](unsigned, const H5E_error2_t* error, void* out) -> herr_t {
    auto& text = *static_cast<std::string*>(out);
    if (text.empty() && error->desc != nullptr) text = error->desc;
    return 0;
  }, &message);
  H5Eclear2(H5E_DEFAULT);
  return message.empty() ? "HDF5 call failed" : message;
}

// Calls an HDF5 function returning an id or a status; a negative result is an InputError naming
// the file and the dataset.
template <class T>
T check(T result, const fs::path& file, const std::string& dataset, const std::string& what) {
  if (result < 0) throw InputError(file.string(), dataset, what + ": " + hdf5_message());
  return result;
}

// Closes an HDF5 id when it goes out of scope.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Id() {
    if (id_ >= 0) close_(id_);
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  operator hid_t() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

hid_t memory_type(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? H5T_NATIVE_UINT16 : dtype == at::kInt ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT;
}

}  // namespace

Hdf5Writer::Hdf5Writer(fs::path path) : path_(std::move(path)), temp_(path_.string() + ".tmp") {
  silence_hdf5();
  file_ = check(H5Fcreate(temp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), path_, "file", "cannot create " + temp_.string());
}

Hdf5Writer::~Hdf5Writer() {
  if (file_ >= 0) {
    release();
    std::error_code ignored;
    fs::remove(temp_, ignored);
  }
}

void Hdf5Writer::release() {
  for (auto& [name, dataset] : datasets_) H5Dclose(dataset.id);
  datasets_.clear();
  H5Fclose(file_);
  file_ = -1;
}

void Hdf5Writer::create_dataset(const std::string& name, at::ScalarType dtype, const std::vector<std::int64_t>& row_shape) {
  if (file_ < 0) throw InputError(path_.string(), name, "the store is already closed");
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kInt)
    throw InputError(path_.string(), name, "only fp32, bf16 and int32 datasets are supported");
  if (datasets_.count(name) != 0) throw InputError(path_.string(), name, "dataset already exists");
  if (row_shape.size() + 1 > kMaxRank) throw InputError(path_.string(), name, "too many dimensions");
  std::vector<hsize_t> dims = {0}, max_dims = {H5S_UNLIMITED}, chunk = {1};
  std::int64_t row_bytes = dtype == at::kBFloat16 ? 2 : 4;
  for (const auto d : row_shape) {
    if (d < 1) throw InputError(path_.string(), name, "row dimensions must be >= 1");
    dims.push_back(static_cast<hsize_t>(d));
    max_dims.push_back(static_cast<hsize_t>(d));
    chunk.push_back(static_cast<hsize_t>(d));
    row_bytes *= d;
  }
  // About 1 MiB chunks (whole rows): big enough for fast sequential I/O, and a chunk stays far below
  // HDF5's 4 GiB chunk limit unless one row exceeds it.
  chunk[0] = static_cast<hsize_t>(std::max<std::int64_t>(1, (std::int64_t{1} << 20) / row_bytes));
  const Id space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data()), path_, name, "dataspace"), H5Sclose);
  const Id properties(check(H5Pcreate(H5P_DATASET_CREATE), path_, name, "properties"), H5Pclose);
  check(H5Pset_chunk(properties, static_cast<int>(chunk.size()), chunk.data()), path_, name, "chunking");
  const hid_t file_type = dtype == at::kBFloat16 ? H5T_STD_U16LE : dtype == at::kInt ? H5T_STD_I32LE : H5T_IEEE_F32LE;
  const hid_t id = check(H5Dcreate2(file_, name.c_str(), file_type, space, H5P_DEFAULT, properties, H5P_DEFAULT), path_, name, "cannot create dataset");
  datasets_[name] = {id, dtype, row_shape, 0};
  if (dtype == at::kBFloat16) {
    const Id string_type(H5Tcopy(H5T_C_S1), H5Tclose);
    check(H5Tset_size(string_type, 4), path_, name, "attribute type");
    const Id scalar(H5Screate(H5S_SCALAR), H5Sclose);
    const Id attribute(check(H5Acreate2(id, kDtypeAttribute, string_type, scalar, H5P_DEFAULT, H5P_DEFAULT), path_, name, "attribute"), H5Aclose);
    check(H5Awrite(attribute, string_type, "bf16"), path_, name, "attribute");
  }
}

void Hdf5Writer::append(const std::string& name, const at::Tensor& rows) {
  const auto it = datasets_.find(name);
  if (file_ < 0 || it == datasets_.end()) throw InputError(path_.string(), name, file_ < 0 ? "the store is already closed" : "no such dataset");
  auto& dataset = it->second;
  const bool shape_ok = rows.dim() == static_cast<std::int64_t>(dataset.row_shape.size()) + 1 &&
                        std::equal(dataset.row_shape.begin(), dataset.row_shape.end(), rows.sizes().begin() + 1);
  if (!shape_ok || rows.scalar_type() != dataset.dtype) {
    throw InputError(path_.string(), name, "rows must be [n, " + c10::Join(", ", dataset.row_shape) + "] of " + c10::toString(dataset.dtype) +
                                               ", got " + c10::toString(rows.scalar_type()) + " [" + c10::Join(", ", rows.sizes()) + "]");
  }
  if (rows.size(0) == 0) return;
  const at::Tensor cpu = rows.to(at::kCPU).contiguous();
  std::vector<hsize_t> start(rows.dim(), 0), count(rows.sizes().begin(), rows.sizes().end()), extent = count;
  start[0] = static_cast<hsize_t>(dataset.rows);
  extent[0] = static_cast<hsize_t>(dataset.rows + rows.size(0));
  check(H5Dset_extent(dataset.id, extent.data()), path_, name, "cannot grow dataset");
  const Id file_space(check(H5Dget_space(dataset.id), path_, name, "dataspace"), H5Sclose);
  check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), path_, name, "selection");
  const Id memory_space(check(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), path_, name, "dataspace"), H5Sclose);
  check(H5Dwrite(dataset.id, memory_type(dataset.dtype), memory_space, file_space, H5P_DEFAULT, cpu.data_ptr()), path_, name, "write failed");
  dataset.rows += rows.size(0);
}

void Hdf5Writer::close() {
  if (file_ < 0) throw InputError(path_.string(), "file", "the store is already closed");
  check(H5Fflush(file_, H5F_SCOPE_GLOBAL), path_, "file", "flush failed");
  release();
  try {
    publish_file(temp_, path_);
  } catch (const std::exception& e) {
    std::error_code ignored;
    fs::remove(temp_, ignored);
    throw InputError(path_.string(), "file", std::string("cannot be put in place: ") + e.what());
  }
}

Hdf5Reader::Hdf5Reader(fs::path path) : path_(std::move(path)) {
  silence_hdf5();
  if (!fs::exists(path_)) throw InputError(path_.string(), "file", "does not exist");
  file_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0) throw InputError(path_.string(), "file", "not a readable HDF5 file (truncated or corrupt?): " + hdf5_message());
}

Hdf5Reader::~Hdf5Reader() { H5Fclose(file_); }

std::vector<std::string> Hdf5Reader::names() const {
  std::vector<std::string> names;
  check(H5Literate(file_, H5_INDEX_NAME, H5_ITER_INC, nullptr, [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
          static_cast<std::vector<std::string>*>(out)->push_back(name);
          return 0;
        }, &names), path_, "file", "cannot list datasets");
  return names;
}

std::int64_t Hdf5Reader::open_dataset(const std::string& name) const {
  if (H5Lexists(file_, name.c_str(), H5P_DEFAULT) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw InputError(path_.string(), name, "no such dataset");
  }
  return check(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), path_, name, "cannot open dataset");
}

at::ScalarType Hdf5Reader::dtype(const std::string& name) const {
  const Id dataset(open_dataset(name), H5Dclose);
  const Id type(check(H5Dget_type(dataset), path_, name, "type"), H5Tclose);
  if (H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 4) return at::kFloat;
  if (H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 4 && H5Tget_sign(type) == H5T_SGN_2) return at::kInt;
  if (H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 2 && H5Tget_sign(type) == H5T_SGN_NONE && H5Aexists(dataset, kDtypeAttribute) > 0) {
    const Id attribute(check(H5Aopen(dataset, kDtypeAttribute, H5P_DEFAULT), path_, name, "attribute"), H5Aclose);
    const Id string_type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(string_type, 4);
    char value[5] = {};
    check(H5Aread(attribute, string_type, value), path_, name, "attribute");
    if (std::string(value) == "bf16") return at::kBFloat16;
  }
  throw InputError(path_.string(), name, "not an fp32, int32 or bf16 (uint16 with dtype=\"bf16\") dataset");
}

std::vector<std::int64_t> Hdf5Reader::shape(const std::string& name) const {
  const Id dataset(open_dataset(name), H5Dclose);
  const Id space(check(H5Dget_space(dataset), path_, name, "dataspace"), H5Sclose);
  const int rank = check(H5Sget_simple_extent_ndims(space), path_, name, "dataspace");
  if (rank < 1 || rank > kMaxRank) throw InputError(path_.string(), name, "expected [N, ...] rows");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), path_, name, "dataspace");
  return {dims.begin(), dims.end()};
}

at::Tensor Hdf5Reader::read(const std::string& name, std::int64_t begin, std::int64_t end) const {
  const auto dtype = this->dtype(name);
  auto sizes = shape(name);
  if (begin < 0 || begin > end || end > sizes[0]) {
    throw InputError(path_.string(), name, "rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range [0, " + std::to_string(sizes[0]) + ")");
  }
  sizes[0] = end - begin;
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(dtype));
  if (out.numel() == 0) return out;
  const Id dataset(open_dataset(name), H5Dclose);
  const Id file_space(check(H5Dget_space(dataset), path_, name, "dataspace"), H5Sclose);
  std::vector<hsize_t> start(sizes.size(), 0), count(sizes.begin(), sizes.end());
  start[0] = static_cast<hsize_t>(begin);
  check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), path_, name, "selection");
  const Id memory_space(check(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), path_, name, "dataspace"), H5Sclose);
  check(H5Dread(dataset, memory_type(dtype), memory_space, file_space, H5P_DEFAULT, out.data_ptr()), path_, name, "read failed (truncated or corrupt file?)");
  return out;
}

}  // namespace linearize
