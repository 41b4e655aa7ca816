#include "cli/recipe_settings.h"

#include "formats/error.h"

namespace linearize::cli {

nlohmann::json parse_settings(const std::vector<std::string>& settings) {
  nlohmann::json params = nlohmann::json::object();
  for (const auto& s : settings) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw InputError("command line", "--set", "'" + s + "' is not key=value");
    const auto key = s.substr(0, eq), text = s.substr(eq + 1);
    auto value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    params[key] = value.is_discarded() ? nlohmann::json(text) : value;
  }
  return params;
}

}  // namespace linearize::cli
