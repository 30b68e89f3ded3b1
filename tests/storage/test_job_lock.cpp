// One writer per job directory: a second lock fails naming the holder, a dead holder frees it.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
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


// Issue 14, finding 5: "DIR is in use" invites removing .lock; that must not let a second writer in.
TEST(JobLock, RemovingTheLockFileDoesNotReleaseTheLock) {
  for (const auto kind : {JobLock::Kind::kWriter, JobLock::Kind::kRetrain}) {
    const auto dir = scratch::fresh_dir("job_lock", kind == JobLock::Kind::kWriter ? "removed" : "removed_retrain");
    std::optional<JobLock> held;
    held.emplace(dir, "lethe serve", kind);
    std::filesystem::remove(JobLock::path(dir, kind));
    try {
      JobLock second(dir, "lethe delete --job", kind);
      FAIL() << "a second holder got the lock after the lock file was removed";
    } catch (const StorageError& e) {
      EXPECT_EQ(e.kind(), StorageErrorKind::kLocked) << e.what();
    }
    EXPECT_TRUE(JobLock::holder(dir, kind).has_value());
    held.reset();
    EXPECT_FALSE(JobLock::holder(dir, kind).has_value());
    EXPECT_NO_THROW(JobLock again(dir, "lethe serve", kind));
  }
}

TEST(JobLock, ALockFileLinkedElsewhereIsRefusedAndTheTargetLeftAlone) {
  const auto dir = scratch::fresh_dir("job_lock", "symlink");
  const auto victim = dir / "precious.txt";
  { std::ofstream(victim) << "keep me"; }
  std::filesystem::create_symlink(victim, JobLock::path(dir, JobLock::Kind::kWriter));
  try {
    JobLock lock(dir, "lethe serve");
    FAIL() << "took a lock through a symbolic link";
  } catch (const StorageError& e) {
    EXPECT_EQ(e.kind(), StorageErrorKind::kRefused) << e.what();
    EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
  }
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "keep me");
}

}  // namespace
}  // namespace lethe::storage
