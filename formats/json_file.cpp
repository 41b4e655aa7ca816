#include "formats/json_file.h"

#include <fstream>
#include <sstream>

#include "formats/error.h"

namespace linearize {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), "file", "cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path.string(), "file", std::string("not valid JSON (") + e.what() + ")");
  }
}

JsonObject::JsonObject(const nlohmann::json& value, std::string file, std::string prefix)
    : value_(&value), file_(std::move(file)), prefix_(std::move(prefix)) {
  if (!value_->is_object()) throw InputError(file_, prefix_.empty() ? "file" : prefix_.substr(0, prefix_.size() - 1), "not a JSON object");
}

bool JsonObject::has(const std::string& key) const {
  const auto it = value_->find(key);
  return it != value_->end() && !it->is_null();
}

void JsonObject::fail(const std::string& key, const std::string& message) const { throw InputError(file_, field(key), message); }

const nlohmann::json& JsonObject::at(const std::string& key) const {
  if (!has(key)) fail(key, "required key is missing");
  return value_->at(key);
}

std::int64_t JsonObject::get_int(const std::string& key) const {
  const auto& v = at(key);
  if (!v.is_number_integer()) fail(key, "expected an integer, got " + v.dump());
  return v.get<std::int64_t>();
}

std::optional<std::int64_t> JsonObject::get_optional_int(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_int(key);
}

double JsonObject::get_double(const std::string& key) const {
  const auto& v = at(key);
  if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
  return v.get<double>();
}

std::optional<double> JsonObject::get_optional_double(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_double(key);
}

bool JsonObject::get_bool(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  const auto& v = value_->at(key);
  if (!v.is_boolean()) fail(key, "expected true or false, got " + v.dump());
  return v.get<bool>();
}

std::string JsonObject::get_string(const std::string& key) const {
  const auto& v = at(key);
  if (!v.is_string()) fail(key, "expected a string, got " + v.dump());
  return v.get<std::string>();
}

std::optional<std::string> JsonObject::get_optional_string(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  return get_string(key);
}

template <class T>
std::vector<T> JsonObject::get_list(const std::string& key, const char* what,
                                    bool (nlohmann::json::*accepts)() const noexcept) const {
  const auto& v = at(key);
  if (!v.is_array()) fail(key, std::string("expected a list of ") + what + ", got " + v.dump());
  std::vector<T> out;
  for (const auto& item : v) {
    if (!(item.*accepts)()) fail(key, std::string("expected a list of ") + what + ", got " + v.dump());
    out.push_back(item.get<T>());
  }
  return out;
}

std::vector<std::string> JsonObject::get_string_list(const std::string& key) const {
  return get_list<std::string>(key, "strings", &nlohmann::json::is_string);
}

std::vector<std::int64_t> JsonObject::get_int_list(const std::string& key) const {
  return get_list<std::int64_t>(key, "integers", &nlohmann::json::is_number_integer);
}

std::vector<double> JsonObject::get_double_list(const std::string& key) const {
  return get_list<double>(key, "numbers", &nlohmann::json::is_number);
}

std::optional<JsonObject> JsonObject::get_optional_object(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const auto& v = value_->at(key);
  if (!v.is_object()) fail(key, "expected an object, got " + v.dump());
  return JsonObject(v, file_, field(key) + ".");
}

}  // namespace linearize
