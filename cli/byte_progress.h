// Progress of a command that writes a checkpoint's bytes (convert, export-native): one log line at every tenth,
// with the rate and the time left.
#pragma once

#include <cstdint>
#include <functional>

namespace linearize::cli {

std::function<void(std::uint64_t written, std::uint64_t total)> byte_progress();

}  // namespace linearize::cli
