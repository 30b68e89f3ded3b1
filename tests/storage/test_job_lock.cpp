// One writer per job directory: a second lock fails naming the holder, a dead holder frees it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>

#include "scratch_files.h"
#include "storage/error.h"
#include "storage/job_lock.h"

namespace lethe::storage {
namespace {

TEST(JobLock, SecondWriterIsRefusedWithTheHolderNamed) {
  const auto dir = scratch::fresh_dir("job_lock", "second");
  std::optional<JobLock> first;
  first.emplace(dir, "lethe serve");
  try {
    JobLock second(dir, "lethe retrain");
    FAIL() << "a second writer got the lock";
  } catch (const StorageError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("lethe serve (pid " + std::to_string(::getpid()) + ")"), std::string::npos) << message;
    EXPECT_NE(message.find("try again"), std::string::npos) << message;
  }
  first.reset();
  EXPECT_NO_THROW(JobLock third(dir, "lethe retrain"));
}

TEST(JobLock, KilledHolderReleasesTheLock) {
  const auto dir = scratch::fresh_dir("job_lock", "killed");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    JobLock held(dir, "child");
    (void)::write(ready[1], "x", 1);
    ::pause();
    ::_exit(0);
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  EXPECT_THROW(JobLock(dir, "parent"), StorageError);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_NO_THROW(JobLock(dir, "parent"));
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST(JobLock, MissingDirectoryIsAnError) {
  const auto dir = scratch::fresh_dir("job_lock", "missing") / "absent";
  try {
    JobLock lock(dir, "lethe serve");
    FAIL() << "locked a directory that does not exist";
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lethe::storage
