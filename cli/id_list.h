// "1,2,3" on the command line -> token ids, with errors naming the flag and the item.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace linearize::cli {

// Throws InputError("command line", flag, ...) for an item that is not a non-negative integer.
std::vector<std::int64_t> parse_id_list(const std::string& list, const std::string& flag);

}  // namespace linearize::cli
