// Helpers shared by the C++ tests: scratch directories, raw files, running the CLI.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace linearize::test {

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

void write_file(const std::filesystem::path& path, const std::string& bytes);
std::string read_file(const std::filesystem::path& path);

// A safetensors file from a header JSON text and a data buffer, exactly as given (for lying headers).
std::string safetensors_bytes(const std::string& header_json, const std::string& data);

// The names of the files in a directory, sorted (to check that nothing half-written was left behind).
std::vector<std::string> list_dir(const std::filesystem::path& dir);

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs the linearize binary with `args` (each one shell-quoted), capturing stdout and stderr.
CommandResult run_linearize(const std::vector<std::string>& args);

std::filesystem::path fixtures_dir();
// The decoder fixtures every family-wide test runs on: each tiny-* directory (one per registered family, checked by
// Fixtures.EveryRegisteredFamilyHasOne) and deep-llama, sorted.
std::vector<std::string> fixture_models();

}  // namespace linearize::test
