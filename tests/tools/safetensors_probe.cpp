// Test tool for the Python oracle tests: shows what our safetensors reader sees, and writes files with
// our writer, so Python `safetensors` can check both directions.
//   safetensors_probe dump FILE          -> JSON {"__metadata__": {...}, "tensors": {name: {dtype, shape, values}}}
//   safetensors_probe write FILE SPEC    <- SPEC JSON of the same form
// Values are numbers, or "nan" / "inf" / "-inf" strings (JSON has no non-finite numbers).
#include <ATen/ATen.h>

#include <cmath>
#include <iostream>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_file.h"
#include "formats/safetensors.h"

namespace {

using nlohmann::json;
using namespace linearize;

json value_json(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

double value_from_json(const json& v) {
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (s == "nan") return std::nan("");
    return s == "inf" ? INFINITY : -INFINITY;
  }
  return v.get<double>();
}

int dump(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  json out = {{"__metadata__", file.metadata()}, {"tensors", json::object()}};
  for (const auto& name : file.names()) {
    const at::Tensor t = file.tensor(name);
    // Doubles hold every value of every loadable dtype exactly (I64 only up to 2^53; the tests stay inside).
    const at::Tensor flat = t.to(at::kDouble).flatten().contiguous();
    json values = json::array();
    for (int64_t i = 0; i < flat.numel(); ++i) values.push_back(value_json(flat.data_ptr<double>()[i]));
    out["tensors"][name] = {{"dtype", dtype_name(from_scalar_type(t.scalar_type()))}, {"shape", t.sizes().vec()}, {"values", values}};
  }
  std::cout << out.dump() << '\n';
  return 0;
}

int write(const std::string& path, const std::string& spec_path) {
  const json spec = read_json_file(spec_path);
  NamedTensors tensors;
  for (const auto& [name, t] : spec.at("tensors").items()) {
    DType dtype{};
    if (!dtype_from_name(t.at("dtype").get<std::string>(), &dtype)) throw std::runtime_error("bad dtype in spec");
    std::vector<double> values;
    for (const auto& v : t.at("values")) values.push_back(value_from_json(v));
    const auto shape = t.at("shape").get<std::vector<int64_t>>();
    at::Tensor d = at::tensor(values, at::kDouble).reshape(shape);
    tensors.emplace_back(name, d.to(to_scalar_type(dtype)));
  }
  write_safetensors(path, tensors, spec.value("__metadata__", std::map<std::string, std::string>{}));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "dump" && argc == 3) return dump(argv[2]);
    if (mode == "write" && argc == 4) return write(argv[2], argv[3]);
    std::cerr << "usage: safetensors_probe dump FILE | write FILE SPEC.json\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  }
}
