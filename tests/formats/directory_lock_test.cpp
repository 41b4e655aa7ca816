// DirectoryLock: one holder per directory; the second names the lock file and the holder's pid, and the
// lock is free again once the holder lets go.
#include <gtest/gtest.h>

#include <unistd.h>

#include <optional>

#include "formats/directory_lock.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

TEST(DirectoryLock, ASecondHolderIsBadInputNamingTheLockAndTheHolder) {
  test::TempDir dir;
  std::optional<DirectoryLock> first(std::in_place, dir / "run");
  try {
    DirectoryLock second(dir / "run");
    ADD_FAILURE() << "the directory was locked twice";
  } catch (const InputError& e) {
    EXPECT_EQ(e.field(), "lock");
    const std::string message = e.what();
    EXPECT_NE(message.find((dir / "run" / ".lock").string()), std::string::npos) << message;
    EXPECT_NE(message.find("pid " + std::to_string(::getpid())), std::string::npos) << message;
  }
  first.reset();
  EXPECT_NO_THROW(DirectoryLock again(dir / "run"));
}

}  // namespace
}  // namespace linearize
