// The real text verify runs on when no --text is given (docs/verification.md#prompts): a few KB of prose, code,
// numbers and non-English prose, compiled into the binary so an export verifies anywhere.
#pragma once

#include <string_view>
#include <vector>

namespace linearize {

const std::vector<std::string_view>& builtin_verify_texts();

}  // namespace linearize
