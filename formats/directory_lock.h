// An exclusive lock on a working directory (flock on <dir>/.lock), so that two processes never write the
// same run: the second finds it held and stops before touching anything. The kernel drops the lock when
// the holder exits, however it exits (kill -9 included), so a crashed run never leaves a stale lock.
#pragma once

#include <filesystem>

namespace linearize {

class DirectoryLock {
 public:
  // Creates `dir` if needed and takes its lock; InputError(<dir>/.lock, "lock") naming the holder's pid
  // when another process (or another DirectoryLock in this one) holds it.
  explicit DirectoryLock(const std::filesystem::path& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace linearize
