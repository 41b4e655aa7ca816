// Shared by the converter tests: a fixture converted into a scratch directory, and a verify report's row.
#pragma once

#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/verify.h"
#include "test_util.h"

namespace linearize::test {

// tests/fixtures/<fixture> converted with `recipe` into dir/<fixture>-<recipe> (nothing recorded or verified).
inline std::filesystem::path convert_fixture(const TempDir& dir, const std::string& fixture, const std::string& recipe,
                                             nlohmann::json params = nlohmann::json::object()) {
  ConvertOptions options;
  options.source = fixtures_dir() / fixture;
  options.out = dir / (fixture + "-" + recipe);
  options.recipe = recipe;
  options.params = std::move(params);
  convert_checkpoint(options);
  return options.out;
}

// A copy of tests/fixtures/<fixture> at `to` whose config.json `edit` has changed.
inline std::filesystem::path copy_fixture(const std::string& fixture, const std::filesystem::path& to,
                                          const std::function<void(nlohmann::json&)>& edit) {
  std::filesystem::copy(fixtures_dir() / fixture, to, std::filesystem::copy_options::recursive);
  auto config = nlohmann::json::parse(read_file(to / "config.json"));
  edit(config);
  write_file(to / "config.json", config.dump());
  return to;
}

// The first check whose name starts with `name_start`.
inline const CheckResult& report_row(const VerifyReport& report, const std::string& name_start) {
  for (const auto& c : report.checks)
    if (c.name.rfind(name_start, 0) == 0) return c;
  throw std::runtime_error("no check " + name_start);
}

}  // namespace linearize::test
