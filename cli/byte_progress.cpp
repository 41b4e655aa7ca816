#include "cli/byte_progress.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>

namespace linearize::cli {

std::function<void(std::uint64_t written, std::uint64_t total)> byte_progress() {
  const auto started = std::chrono::steady_clock::now();
  auto next_tenth = std::make_shared<int>(1);
  return [started, next_tenth](std::uint64_t written, std::uint64_t total) {
    if (total == 0 || written * 10 < static_cast<std::uint64_t>(*next_tenth) * total) return;
    *next_tenth = static_cast<int>(written * 10 / total) + 1;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double rate = static_cast<double>(written) / std::max(seconds, 1e-9);
    const double unit = total >= 1e9 ? 1e9 : 1e6;  // GB for real models, MB for small ones
    const char* name = total >= 1e9 ? "GB" : "MB";
    spdlog::info("wrote {:.2f} of {:.2f} {} ({:.0f}%), {:.2f} {}/s, ETA {:.0f} s", written / unit, total / unit, name,
                 100.0 * static_cast<double>(written) / static_cast<double>(total), rate / unit, name,
                 static_cast<double>(total - written) / std::max(rate, 1.0));
  };
}

}  // namespace linearize::cli
