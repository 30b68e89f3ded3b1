// Crash-in-the-middle tests of the checkpoint commit protocol: a forked writer is SIGKILLed at
// each CommitStage; the parent then checks what survived, and that the store recovers.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "storage/checkpoint_store.h"
#include "tests/storage/test_checkpoint_support.h"

using namespace lethe::storage;
using namespace lethe::storage::testing;

namespace {

// Forks a process that runs `action` on its own store over `root` and SIGKILLs itself when it
// reaches `stage`; expects it to die by that signal (exit code 0 or 2 means the hook never ran).
void run_killed_at(const fs::path& root, CommitStage stage, const std::function<void(CheckpointStore&)>& action) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      CheckpointStore store(root);
      store.set_stage_hook_for_testing([stage](CommitStage reached) {
        if (reached == stage) ::raise(SIGKILL);
      });
      action(store);
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the writer was not killed; exit status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

std::vector<fs::path> files_under(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path().filename());
  std::sort(files.begin(), files.end());
  return files;
}

class CheckpointCrashDuringWrite : public ::testing::TestWithParam<CommitStage> {};

}  // namespace

TEST_P(CheckpointCrashDuringWrite, PreviousVersionSurvivesAndTheNextWriteSucceeds) {
  const fs::path root = fresh_dir("crash_write_" + std::to_string(static_cast<int>(GetParam())));
  const TensorData committed = distinctive_tensor("w", 1);
  const TensorData crashed = distinctive_tensor("w", 2);
  std::string committed_digest;
  {
    CheckpointStore store(root);
    committed_digest = store.write("s", {committed}, {{"prefix", 1}}).digest;
  }
  run_killed_at(root, GetParam(), [&](CheckpointStore& store) { (void)store.write("s", {crashed}, {{"prefix", 2}}); });

  // The half-written version left something behind on disk (so the crash happened mid-write)...
  const std::vector<fs::path> leftovers = files_under(root / "s");
  const fs::path expected_leftover = GetParam() == CommitStage::kDataWritten      ? "v000002.h5.tmp"
                                     : GetParam() == CommitStage::kDataCommitted ? "v000002.h5"
                                                                                  : "MANIFEST.json.tmp";
  EXPECT_NE(std::find(leftovers.begin(), leftovers.end(), expected_leftover), leftovers.end()) << expected_leftover;

  // ...but it is not committed: the previous version is the latest and verifies.
  CheckpointStore store(root);
  const std::vector<CheckpointInfo> listed = store.versions("s");
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].version, 1);
  const Checkpoint latest = store.load_latest("s");
  EXPECT_EQ(latest.info.version, 1);
  EXPECT_EQ(latest.info.digest, committed_digest);
  EXPECT_EQ(latest.tensor("w").bytes, committed.bytes);
  EXPECT_THROW((void)store.load("s", 2), StorageError);

  // The next write cleans up (shreds) the leftovers and commits normally.
  const TensorData next = distinctive_tensor("w", 3);
  EXPECT_EQ(store.write("s", {next}, {{"prefix", 2}}).version, 2);
  EXPECT_EQ(files_under(root / "s"), (std::vector<fs::path>{"MANIFEST.json", "v000001.h5", "v000002.h5"}));
  EXPECT_TRUE(files_containing(root, crashed.bytes).empty());
  EXPECT_EQ(store.load_latest("s").tensor("w").bytes, next.bytes);
  EXPECT_EQ(store.load("s", 1).info.digest, committed_digest);
  fs::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(EveryWriteStage, CheckpointCrashDuringWrite,
                         ::testing::Values(CommitStage::kDataWritten, CommitStage::kDataCommitted,
                                           CommitStage::kManifestWritten),
                         [](const ::testing::TestParamInfo<CommitStage>& info) {
                           switch (info.param) {
                             case CommitStage::kDataWritten: return std::string("AfterTmpWrite");
                             case CommitStage::kDataCommitted: return std::string("AfterDataRename");
                             case CommitStage::kManifestWritten: return std::string("AfterManifestTmpWrite");
                             default: return std::string("Other");
                           }
                         });

TEST(CheckpointCrash, CrashDuringTheFirstWriteOfASeriesLeavesNoSeries) {
  const fs::path root = fresh_dir("crash_first");
  run_killed_at(root, CommitStage::kDataCommitted,
                [](CheckpointStore& store) { (void)store.write("s", {distinctive_tensor("w", 1)}, {{"prefix", 1}}); });
  ASSERT_TRUE(fs::exists(root / "s" / "v000001.h5"));  // the data file was renamed, the manifest never came
  CheckpointStore store(root);
  EXPECT_TRUE(store.names().empty());
  EXPECT_TRUE(store.versions("s").empty());
  EXPECT_THROW((void)store.load_latest("s"), StorageError);
  EXPECT_THROW((void)store.load("s", 1), StorageError);
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 2)}, {{"prefix", 1}}).version, 1);
  EXPECT_TRUE(files_containing(root, distinctive_tensor("w", 1).bytes).empty());
  EXPECT_EQ(store.load_latest("s").tensor("w").bytes, distinctive_tensor("w", 2).bytes);
  fs::remove_all(root);
}

TEST(CheckpointCrash, CrashMidPurgeNeverLeavesAManifestPointingAtAMissingFile) {
  const fs::path root = fresh_dir("crash_purge");
  const TensorData doomed = distinctive_tensor("w", 2);
  {
    CheckpointStore store(root);
    (void)store.write("s", {distinctive_tensor("w", 1)}, {{"prefix", 1}});
    (void)store.write("s", {doomed}, {{"prefix", 2}});
  }
  run_killed_at(root, CommitStage::kPurgeManifestCommitted, [](CheckpointStore& store) { store.purge("s", 2); });

  CheckpointStore store(root);
  ASSERT_EQ(store.versions("s").size(), 1u);  // the manifest was committed first...
  EXPECT_EQ(store.load_latest("s").info.version, 1);
  EXPECT_FALSE(files_containing(root, doomed.bytes).empty());  // ...the file was not yet shredded
  EXPECT_THROW((void)store.load("s", 2), StorageError);        // and is never loaded
  store.purge("s", 2);                                         // the replayed purge finishes the job
  EXPECT_TRUE(files_containing(root, doomed.bytes).empty());
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 3)}, {{"prefix", 2}}).version, 3);
  fs::remove_all(root);
}
