#include "formats/safetensors_header.h"

#include <algorithm>
#include <array>
#include <set>

#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace linearize {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors is little-endian; so must the host be");

struct DTypeInfo {
  DType dtype;
  const char* name;
  int bits;
};

constexpr std::array<DTypeInfo, 22> kDTypes{{
    {DType::BOOL, "BOOL", 8},       {DType::U8, "U8", 8},
    {DType::I8, "I8", 8},           {DType::I16, "I16", 16},
    {DType::U16, "U16", 16},        {DType::F16, "F16", 16},
    {DType::BF16, "BF16", 16},      {DType::I32, "I32", 32},
    {DType::U32, "U32", 32},        {DType::F32, "F32", 32},
    {DType::F64, "F64", 64},        {DType::I64, "I64", 64},
    {DType::U64, "U64", 64},        {DType::F8_E5M2, "F8_E5M2", 8},
    {DType::F8_E4M3, "F8_E4M3", 8}, {DType::F8_E8M0, "F8_E8M0", 8},
    {DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8}, {DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {DType::F4, "F4", 4},           {DType::F6_E2M3, "F6_E2M3", 6},
    {DType::F6_E3M2, "F6_E3M2", 6}, {DType::C64, "C64", 64},
}};

const DTypeInfo& info(DType dtype) {
  for (const auto& i : kDTypes)
    if (i.dtype == dtype) return i;
  throw std::logic_error("unhandled DType");
}

using json = nlohmann::json;

// nlohmann keeps the last of duplicated keys silently; safetensors forbids duplicates, so we watch the
// key events of every object while parsing.
json parse_json_rejecting_duplicates(const std::string& text, const std::string& path) {
  std::vector<std::set<std::string>> keys_per_depth;
  std::string duplicate;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    const auto d = static_cast<std::size_t>(depth);
    if (event == json::parse_event_t::object_start) {
      if (keys_per_depth.size() <= d + 1) keys_per_depth.resize(d + 2);
      keys_per_depth[d + 1].clear();
    } else if (event == json::parse_event_t::key) {
      if (keys_per_depth.size() <= d) keys_per_depth.resize(d + 1);
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_per_depth[d].insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text, callback);
  } catch (const json::exception& e) {
    throw InputError(path, "header", std::string("not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) throw InputError(path, "header", "duplicate key '" + duplicate + "'");
  return doc;
}

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& path, const std::string& field) {
  if (a != 0 && b > UINT64_MAX / a) throw InputError(path, field, "shape overflows 64 bits");
  return a * b;
}

TensorEntry parse_entry(const std::string& name, const json& value, const std::string& path) {
  const std::string field = "tensor '" + name + "'";
  if (name.empty()) throw InputError(path, "header", "empty tensor name");
  if (!value.is_object()) throw InputError(path, field, "entry is not an object");
  for (const auto& [key, _] : value.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      throw InputError(path, field + "." + key, "unexpected field");

  TensorEntry entry;
  entry.name = name;
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) throw InputError(path, field + ".dtype", "missing or not a string");
  if (!dtype_from_name(dtype->get<std::string>(), &entry.dtype))
    throw InputError(path, field + ".dtype", "unknown dtype '" + dtype->get<std::string>() + "'");

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) throw InputError(path, field + ".shape", "missing or not an array");
  for (const auto& dim : *shape) {
    if (!dim.is_number_unsigned() || dim.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      // Never dump() a nested value: nlohmann's serializer recurses per level, and a crafted
      // [[[[...]]]] would overflow the stack (found by tests/fuzz).
      throw InputError(path, field + ".shape", "dimensions must be non-negative integers, got " +
                                                   (dim.is_primitive() ? dim.dump() : std::string("an ") + dim.type_name()));
    entry.shape.push_back(static_cast<std::int64_t>(dim.get<std::uint64_t>()));
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned())
    throw InputError(path, field + ".data_offsets", "must be [BEGIN, END] non-negative integers");
  entry.begin = (*offsets)[0].get<std::uint64_t>();
  entry.end = (*offsets)[1].get<std::uint64_t>();
  if (entry.end < entry.begin)
    throw InputError(path, field + ".data_offsets", "END " + std::to_string(entry.end) + " < BEGIN " + std::to_string(entry.begin));

  std::uint64_t numel = 1;
  for (auto dim : entry.shape) numel = checked_mul(numel, static_cast<std::uint64_t>(dim), path, field + ".shape");
  const auto bits = checked_mul(numel, static_cast<std::uint64_t>(info(entry.dtype).bits), path, field + ".shape");
  if (bits % 8 != 0)
    throw InputError(path, field + ".shape", "sub-byte dtype " + std::string(dtype_name(entry.dtype)) + " does not end on a byte");
  if (bits / 8 != entry.nbytes())
    throw InputError(path, field + ".data_offsets",
                     "spans " + std::to_string(entry.nbytes()) + " bytes but " + dtype_name(entry.dtype) + " " +
                         shape->dump() + " needs " + std::to_string(bits / 8));
  return entry;
}

}  // namespace

const char* dtype_name(DType dtype) { return info(dtype).name; }
int dtype_bits(DType dtype) { return info(dtype).bits; }

bool dtype_from_name(const std::string& name, DType* out) {
  for (const auto& i : kDTypes)
    if (name == i.name) {
      *out = i.dtype;
      return true;
    }
  return false;
}

std::uint64_t TensorEntry::numel() const {
  std::uint64_t n = 1;
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

const TensorEntry* SafetensorsHeader::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsHeader parse_safetensors_header(const std::uint8_t* file, std::size_t file_size, const std::string& path) {
  if (file_size < 8)
    throw InputError(path, "header length", "truncated: file has " + std::to_string(file_size) + " bytes, fewer than the 8-byte length prefix");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
  if (n > kMaxSafetensorsHeaderBytes)
    throw InputError(path, "header length", std::to_string(n) + " bytes exceeds the 100 MB limit");
  if (n > file_size - 8)
    throw InputError(path, "header length", std::to_string(n) + " bytes runs past the end of the " + std::to_string(file_size) + "-byte file");
  const std::string text(reinterpret_cast<const char*>(file + 8), n);
  if (text.empty() || text.front() != '{') throw InputError(path, "header", "does not start with '{'");

  const json doc = parse_json_rejecting_duplicates(text, path);
  if (!doc.is_object()) throw InputError(path, "header", "not a JSON object");

  SafetensorsHeader header;
  header.data_start = 8 + n;
  for (const auto& [key, value] : doc.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw InputError(path, "__metadata__", "not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) throw InputError(path, "__metadata__." + mk, "value is not a string");
        header.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(parse_entry(key, value, path));
  }

  // The offsets must tile the buffer [0, size) exactly (safetensors `validate`).
  std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const std::uint64_t buffer_size = file_size - header.data_start;
  std::uint64_t expected = 0;
  for (const auto& t : header.tensors) {
    const std::string field = "tensor '" + t.name + "'.data_offsets";
    if (t.begin < expected)
      throw InputError(path, field, "overlaps the previous tensor (begins at " + std::to_string(t.begin) + ", previous ends at " + std::to_string(expected) + ")");
    if (t.begin > expected)
      throw InputError(path, field, "leaves a hole of " + std::to_string(t.begin - expected) + " bytes before it");
    if (t.end > buffer_size)
      throw InputError(path, field, "ends at " + std::to_string(t.end) + ", past the " + std::to_string(buffer_size) + "-byte data buffer (file truncated?)");
    expected = t.end;
  }
  if (expected != buffer_size)
    throw InputError(path, "data buffer", std::to_string(buffer_size - expected) + " trailing bytes after the last tensor");
  return header;
}

std::string serialize_safetensors_header(const std::vector<TensorEntry>& tensors,
                                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();
  if (!metadata.empty()) doc["__metadata__"] = metadata;
  for (const auto& t : tensors)
    doc[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  std::string text = doc.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace linearize
