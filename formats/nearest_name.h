// "Did you mean" for errors about a mistyped name (a recipe, a recipe parameter, a run-file key).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace linearize {

// Levenshtein distance, and the closest of `candidates` to `name` by it (the first of equals).
std::size_t edit_distance(const std::string& a, const std::string& b);
std::string nearest_name(const std::string& name, const std::vector<std::string>& candidates);

}  // namespace linearize
