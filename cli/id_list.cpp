#include "cli/id_list.h"

#include <sstream>

#include "formats/error.h"

namespace linearize::cli {

std::vector<std::int64_t> parse_id_list(const std::string& list, const std::string& flag) {
  std::vector<std::int64_t> ids;
  std::stringstream items(list);
  std::string item;
  for (std::size_t index = 0; std::getline(items, item, ','); ++index) {
    std::size_t used = 0;
    std::int64_t id = -1;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || id < 0 || item.find_first_not_of(" \t", used) != std::string::npos)
      throw InputError("command line", flag, "item " + std::to_string(index) + ": '" + item + "' is not a token id");
    ids.push_back(id);
  }
  if (ids.empty()) throw InputError("command line", flag, "is empty");
  return ids;
}

}  // namespace linearize::cli
