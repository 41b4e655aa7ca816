// Bad-input errors: one line that names the file and the field, mapped to exit code 2 by the CLI.
#pragma once

#include <stdexcept>
#include <string>

namespace linearize {

// Raised for anything wrong with what the user gave us (files, configs, flags). Programming errors and
// failed numeric checks use other types, so the CLI can tell "bad input" (exit 2) from "check failed".
class InputError : public std::runtime_error {
 public:
  InputError(std::string file, std::string field, const std::string& message)
      : std::runtime_error(file + ": " + field + ": " + message), file_(std::move(file)), field_(std::move(field)) {}

  const std::string& file() const { return file_; }
  const std::string& field() const { return field_; }

 private:
  std::string file_;
  std::string field_;
};

}  // namespace linearize
