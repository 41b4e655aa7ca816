// --set key=value for recipe parameters (convert, select-layers).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace linearize::cli {

// The value is read as JSON when it parses (64, 0.5, [1,2], null, true), else as a string (auto:2).
nlohmann::json parse_settings(const std::vector<std::string>& settings);

}  // namespace linearize::cli
