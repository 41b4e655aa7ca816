// JSON files with errors that name the file and the field ("config.json: num_key_value_heads: ...").
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace linearize {

nlohmann::json read_json_file(const std::filesystem::path& path);

// A JSON object plus where it came from, with typed lookups. `prefix` names nested objects in errors.
class JsonObject {
 public:
  JsonObject(const nlohmann::json& value, std::string file, std::string prefix = "");

  bool has(const std::string& key) const;  // present and not null
  const nlohmann::json& raw() const { return *value_; }
  std::string field(const std::string& key) const { return prefix_ + key; }
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  std::int64_t get_int(const std::string& key) const;
  std::optional<std::int64_t> get_optional_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  std::optional<double> get_optional_double(const std::string& key) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::optional<std::string> get_optional_string(const std::string& key) const;
  std::vector<std::string> get_string_list(const std::string& key) const;
  std::vector<std::int64_t> get_int_list(const std::string& key) const;
  std::vector<double> get_double_list(const std::string& key) const;
  std::optional<JsonObject> get_optional_object(const std::string& key) const;

 private:
  const nlohmann::json& at(const std::string& key) const;
  // The list under `key` whose every item `accepts` (what: "strings", ...), as T.
  template <class T>
  std::vector<T> get_list(const std::string& key, const char* what, bool (nlohmann::json::*accepts)() const noexcept) const;
  const nlohmann::json* value_;  // not owned: lives as long as the parsed document
  std::string file_;
  std::string prefix_;
};

}  // namespace linearize
