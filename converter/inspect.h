// What a checkpoint directory holds: the facts `linearize inspect` prints.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace linearize {

// Reads config.json and opens (maps) the weights, validating both. Keys are stable: tools parse --json.
nlohmann::ordered_json inspect_checkpoint(const std::filesystem::path& dir);

// The same facts as aligned "key: value" lines for people.
std::string format_inspection(const nlohmann::ordered_json& report);

}  // namespace linearize
