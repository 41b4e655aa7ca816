#include "formats/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <system_error>

#include "formats/error.h"

namespace linearize {

AtomicFile::AtomicFile(std::filesystem::path target) : target_(std::move(target)) {
  auto dir = target_.parent_path();
  if (dir.empty()) dir = ".";
  std::string pattern = (dir / ("." + target_.filename().string() + ".tmp.XXXXXX")).string();
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0) throw InputError(target_.string(), "file", std::string("cannot create temporary file: ") + std::strerror(errno));
  temp_ = pattern;
  file_ = ::fdopen(fd, "wb");
  if (file_ == nullptr) {
    ::close(fd);
    fail("cannot open temporary file");
  }
}

AtomicFile::~AtomicFile() {
  if (file_ != nullptr) std::fclose(file_);
  if (!temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::fail(const std::string& what) {
  const std::string reason = what + ": " + std::strerror(errno);
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
  if (!temp_.empty()) ::unlink(temp_.c_str());
  temp_.clear();
  throw InputError(target_.string(), "file", reason);
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (file_ == nullptr) throw std::logic_error("AtomicFile::write after commit or failure");
  if (size > 0 && std::fwrite(data, 1, size, file_) != size) fail("write failed");
}

void AtomicFile::commit() {
  if (file_ == nullptr) throw std::logic_error("AtomicFile::commit twice or after failure");
  if (std::fflush(file_) != 0) fail("flush failed");
  if (std::fclose(file_) != 0) {
    file_ = nullptr;
    fail("close failed");
  }
  file_ = nullptr;
  try {
    publish_file(temp_, target_);
  } catch (const std::system_error& e) {
    errno = e.code().value();
    fail(e.what());
  }
  temp_.clear();
}

namespace {

void fsync_path(const std::filesystem::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path.string());
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) throw std::system_error(error, std::generic_category(), "fsync " + path.string());
}

}  // namespace

void publish_file(const std::filesystem::path& temp, const std::filesystem::path& target) {
  fsync_path(temp, O_RDONLY);
  std::filesystem::rename(temp, target);
  fsync_path(target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path(), O_RDONLY | O_DIRECTORY);
}

void write_file_atomic(const std::filesystem::path& target, std::string_view bytes) {
  AtomicFile file(target);
  file.write(bytes);
  file.commit();
}

}  // namespace linearize
