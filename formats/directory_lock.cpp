#include "formats/directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "formats/error.h"

namespace linearize {

DirectoryLock::DirectoryLock(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const auto path = dir / ".lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(path.string(), "lock", std::string("cannot be opened: ") + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char holder[32] = {};
    const auto n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    throw InputError(path.string(), "lock",
                     "is held by another process" + std::string(n > 0 ? " (pid " + std::string(holder, static_cast<std::size_t>(n)) + ")" : "") +
                         " working in this directory: wait for it to finish or use another out");
  }
  // The pid only makes the second process's message more useful: the lock is the flock, not the file's text.
  const auto pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
}

}  // namespace linearize
