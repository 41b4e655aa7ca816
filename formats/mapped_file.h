// Read-only view of a whole file through mmap, shared by every tensor cut out of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace linearize {

class MappedFile {
 public:
  // Maps the file read-only and shared. Tensor views of it are therefore read-only: an in-place op on a
  // loaded weight faults at once instead of silently diverging from the file (copy what you modify).
  // A private writable (copy-on-write) mapping is no faster to open, validate and touch (scripts/bench.sh
  // safetensors times this one).
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the pages of [offset, offset + length) from this process (MADV_DONTNEED; whole pages inside the
  // range only). They stay in the page cache and read back from it if touched again: a loader that has
  // copied a tensor calls this so the process does not also keep the mapped copy resident.
  void release(std::size_t offset, std::size_t length) const;

 private:
  MappedFile(std::string path, std::uint8_t* data, std::size_t size) : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  std::uint8_t* data_;
  std::size_t size_;
};

}  // namespace linearize
