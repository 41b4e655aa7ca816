// The transformers files every export ships (docs/formats.md#transformers-files): configuration_linearize.py and
// modeling_linearize.py, kept in converter/hf/ and compiled into the binary (converter/hf/embed.cmake).
#pragma once

#include <string_view>
#include <vector>

namespace linearize {

struct HfFile {
  std::string_view name;  // file name in the export directory
  std::string_view text;
};

const std::vector<HfFile>& hf_files();

}  // namespace linearize
