// Files appear whole or not at all: write to a temporary name in the target's directory, fsync, rename.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace linearize {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Flushes, fsyncs, renames over the target and fsyncs the directory. Throws on any failure.
  void commit();

  const std::filesystem::path& target() const { return target_; }

 private:
  void fail(const std::string& what);
  std::filesystem::path target_;
  std::filesystem::path temp_;
  std::FILE* file_ = nullptr;
};

void write_file_atomic(const std::filesystem::path& target, std::string_view bytes);

// Makes the complete file `temp` the file at `target`, durably: fsyncs it, renames it over the target and
// fsyncs the directory (without which a crash can forget the rename). Every atomic writer ends here
// (AtomicFile, the HDF5 stores). Throws std::system_error naming the path.
void publish_file(const std::filesystem::path& temp, const std::filesystem::path& target);

}  // namespace linearize
