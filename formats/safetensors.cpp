#include "formats/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>

#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize {
namespace {

struct Loadable {
  DType dtype;
  c10::ScalarType scalar;
};
constexpr Loadable kLoadable[] = {
    {DType::F64, c10::kDouble}, {DType::F32, c10::kFloat}, {DType::F16, c10::kHalf},  {DType::BF16, c10::kBFloat16},
    {DType::I64, c10::kLong},   {DType::I32, c10::kInt},   {DType::I16, c10::kShort}, {DType::I8, c10::kChar},
    {DType::U8, c10::kByte},    {DType::BOOL, c10::kBool},
};

}  // namespace

bool dtype_is_loadable(DType dtype) {
  return std::any_of(std::begin(kLoadable), std::end(kLoadable), [&](const Loadable& l) { return l.dtype == dtype; });
}

c10::ScalarType to_scalar_type(DType dtype) {
  for (const auto& l : kLoadable)
    if (l.dtype == dtype) return l.scalar;
  throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) + " has no tensor type");
}

DType from_scalar_type(c10::ScalarType type) {
  for (const auto& l : kLoadable)
    if (l.scalar == type) return l.dtype;
  throw std::invalid_argument(std::string("tensor type ") + c10::toString(type) + " cannot be stored in safetensors here");
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto file = MappedFile::open(path);
  auto header = parse_safetensors_header(file->data(), file->size(), file->path());
  return SafetensorsFile(std::move(file), std::move(header));
}

const TensorEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(header_.tensors.size());
  for (const auto& t : header_.tensors) out.push_back(t.name);
  return out;
}

void SafetensorsFile::release(const std::string& name) const {
  if (const TensorEntry* entry = find(name)) file_->release(header_.data_start + entry->begin, entry->nbytes());
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorEntry* entry = find(name);
  if (entry == nullptr) throw InputError(path(), "tensor '" + name + "'", "not in this file");
  if (!dtype_is_loadable(entry->dtype))
    throw InputError(path(), "tensor '" + name + "'.dtype",
                     std::string("dtype ") + dtype_name(entry->dtype) + " is not supported (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
  const auto options = at::TensorOptions().dtype(to_scalar_type(entry->dtype));
  const std::uint8_t* data = file_->data() + header_.data_start + entry->begin;
  const auto element_bytes = static_cast<std::uintptr_t>(dtype_bits(entry->dtype) / 8);
  if (reinterpret_cast<std::uintptr_t>(data) % element_bytes != 0) {
    at::Tensor copy = at::empty(entry->shape, options);
    std::memcpy(copy.data_ptr(), data, entry->nbytes());
    return copy;
  }
  auto keep_alive = file_;
  // from_blob takes a mutable pointer; the pages stay read-only (see MappedFile::open).
  return at::from_blob(const_cast<std::uint8_t*>(data), entry->shape, [keep_alive](void*) {}, options);
}

std::uint64_t DeferredTensor::nbytes() const {
  std::uint64_t n = c10::elementSize(dtype);
  for (const auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

DeferredTensors deferred(const NamedTensors& tensors) {
  DeferredTensors out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors)
    out.push_back({name, t.scalar_type(), std::vector<std::int64_t>(t.sizes().begin(), t.sizes().end()), [t] { return t; }});
  return out;
}

void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata, const WrittenFn& written) {
  write_safetensors(path, deferred(tensors), metadata, written);
}

void write_safetensors(const std::filesystem::path& path, const DeferredTensors& tensors,
                       const std::map<std::string, std::string>& metadata, const WrittenFn& written) {
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto sa = c10::elementSize(tensors[a].dtype), sb = c10::elementSize(tensors[b].dtype);
    return sa != sb ? sa > sb : tensors[a].name < tensors[b].name;
  });

  std::vector<TensorEntry> entries;
  entries.reserve(tensors.size());
  std::uint64_t offset = 0;
  for (std::size_t i : order) {
    const auto& t = tensors[i];
    TensorEntry e;
    e.name = t.name;
    e.dtype = from_scalar_type(t.dtype);
    e.shape = t.shape;
    e.begin = offset;
    e.end = offset + t.nbytes();
    offset = e.end;
    entries.push_back(std::move(e));
  }
  std::vector<std::string> names;
  for (const auto& e : entries) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  if (const auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
    throw std::invalid_argument("write_safetensors: duplicate tensor name '" + *dup + "'");

  AtomicFile out(path);
  out.write(serialize_safetensors_header(entries, metadata));
  for (std::size_t i : order) {
    // One tensor at a time on the CPU, so writing never holds a second copy of the whole model.
    const at::Tensor cpu = tensors[i].value().to(at::kCPU).contiguous();
    if (cpu.scalar_type() != tensors[i].dtype || static_cast<std::uint64_t>(cpu.nbytes()) != tensors[i].nbytes() ||
        !std::equal(cpu.sizes().begin(), cpu.sizes().end(), tensors[i].shape.begin(), tensors[i].shape.end()))
      throw std::logic_error("write_safetensors: '" + tensors[i].name + "' is not the dtype and shape it declared");
    out.write(cpu.data_ptr(), static_cast<std::size_t>(cpu.nbytes()));
    if (written) written(tensors[i].name, static_cast<std::uint64_t>(cpu.nbytes()));
  }
  out.commit();
}

}  // namespace linearize
