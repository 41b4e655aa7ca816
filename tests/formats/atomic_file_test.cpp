// Atomic writes: the target appears only on commit, complete; an abandoned or failed write leaves no trace
// and never damages an existing target.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "formats/atomic_file.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

TEST(AtomicFile, TargetAppearsOnlyOnCommit) {
  test::TempDir dir;
  {
    AtomicFile f(dir / "out.bin");
    f.write("hello");
    EXPECT_FALSE(std::filesystem::exists(dir / "out.bin"));
    f.commit();
  }
  EXPECT_EQ(test::read_file(dir / "out.bin"), "hello");
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, AbandonedWriteKeepsTheOldTargetAndLeavesNoTemporary) {
  test::TempDir dir;
  write_file_atomic(dir / "out.bin", "old");
  {
    AtomicFile f(dir / "out.bin");
    f.write("half of the new con");
    // destroyed without commit: an exception or a kill mid-write
  }
  EXPECT_EQ(test::read_file(dir / "out.bin"), "old");
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, FailedWriteIsAClearErrorAndTheOldFileSurvives) {
  test::TempDir dir;
  write_file_atomic(dir / "keep.bin", "previous");
  // A file-size limit makes writes fail with EFBIG, as a full disk fails them with ENOSPC. In a child
  // process, so the limit does not leak into other tests.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    try {
      AtomicFile f(dir / "keep.bin");
      f.write(std::string(1 << 16, 'x'));
      f.commit();
    } catch (const InputError& e) {
      const bool named = std::string(e.what()).find("keep.bin: file:") != std::string::npos;
      std::_Exit(named ? 0 : 2);
    }
    std::_Exit(1);  // the failure went unnoticed
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: write failure not reported; 2: error did not name the file";
  EXPECT_EQ(test::read_file(dir / "keep.bin"), "previous");
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"keep.bin"});
}

TEST(AtomicFile, MissingDirectoryNamesTheTarget) {
  try {
    write_file_atomic("/nonexistent-dir/out.bin", "x");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent-dir/out.bin: file: cannot create temporary file", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace linearize
