// Text placed in HTML or XML (report.html, JUnit reports): the five markup characters as entities.
#pragma once

#include <string>
#include <string_view>

namespace linearize {

std::string escape_markup(std::string_view text);

}  // namespace linearize
