// Tests of the commit protocol primitives and the HDF5 string attributes.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "storage/durable_file.h"
#include "storage/error.h"
#include "storage/hdf5.h"
#include "tests/storage/scratch_files.h"

namespace fs = std::filesystem;
using namespace lethe::storage;

namespace {

fs::path fresh_dir(const std::string& name) { return scratch::fresh_dir("durable", name); }

std::string slurp(const fs::path& path) { return scratch::read_bytes(path); }

}  // namespace

TEST(DurableFile, CommitReplacesTargetAndRemovesTemporary) {
  const fs::path dir = fresh_dir("commit");
  const fs::path target = dir / "manifest.json";
  std::ofstream(target) << "old";
  const fs::path tmp = temp_path_for(target);
  EXPECT_EQ(tmp.filename(), "manifest.json.tmp");
  std::ofstream(tmp) << "new";
  commit_file(tmp, target);
  EXPECT_EQ(slurp(target), "new");
  EXPECT_FALSE(fs::exists(tmp));
  fs::remove_all(dir);
}

TEST(DurableFile, CommitOfMissingFileNamesIt) {
  const fs::path dir = fresh_dir("missing");
  try {
    commit_file(dir / "absent.tmp", dir / "absent");
    FAIL() << "expected StorageError";
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find("absent.tmp"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(DurableFile, ShredOverwritesThenRemoves) {
  const fs::path dir = fresh_dir("shred");
  const fs::path victim = dir / "victim.bin";
  std::ofstream(victim, std::ios::binary) << std::string(3 << 20, 'S');  // spans several write blocks
  // Keep a second hard link so the overwritten content stays observable after unlink.
  const fs::path witness = dir / "witness.bin";
  fs::create_hard_link(victim, witness);
  shred_file(victim);
  EXPECT_FALSE(fs::exists(victim));
  const std::string after = slurp(witness);
  ASSERT_EQ(after.size(), size_t(3) << 20);
  EXPECT_EQ(after.find('S'), std::string::npos);
  fs::remove_all(dir);
}

TEST(Hdf5, StringAttributesRoundTripIncludingEmpty) {
  const fs::path dir = fresh_dir("attr");
  const std::string path = (dir / "a.h5").string();
  {
    h5::File file = h5::create_file(path);
    h5::write_string_attribute(file.get(), "meta", R"({"k": "välue"})");
    h5::write_string_attribute(file.get(), "empty", "");
    h5::write_string_attribute(file.get(), "meta", "replaced");
  }
  h5::File file = h5::open_file(path, false);
  EXPECT_EQ(h5::read_string_attribute(file.get(), "meta"), "replaced");
  EXPECT_EQ(h5::read_string_attribute(file.get(), "empty"), "");
  EXPECT_TRUE(h5::has_attribute(file.get(), "meta"));
  EXPECT_FALSE(h5::has_attribute(file.get(), "nope"));
  fs::remove_all(dir);
}

TEST(Hdf5, OpeningANonHdf5FileSaysSo) {
  const fs::path dir = fresh_dir("nonh5");
  const fs::path path = dir / "plain.txt";
  std::ofstream(path) << "not hdf5";
  EXPECT_FALSE(h5::is_hdf5(path.string()));
  try {
    (void)h5::open_file(path.string(), false);
    FAIL() << "expected StorageError";
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find("is not an HDF5 file"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("plain.txt"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)h5::open_file((dir / "nothing.h5").string(), false), StorageError);
  fs::remove_all(dir);
}

// Issue 14 finding 3: `--out /dev/null` turned /dev/null into a regular file. A commit never
// replaces a target that is not a regular file, and says so with kRefused.
TEST(DurableFile, CommitRefusesTargetsThatAreNotRegularFiles) {
  const fs::path dir = fresh_dir("special_targets");
  const fs::path fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const fs::path real = dir / "real.txt";
  std::ofstream(real) << "keep";
  const fs::path link = dir / "link";
  fs::create_symlink(real, link);
  fs::create_directory(dir / "directory");
  for (const auto& [target, kind] : std::vector<std::pair<fs::path, std::string>>{
           {fifo, "a FIFO"}, {link, "a symlink"}, {dir / "directory", "a directory"}}) {
    const fs::path tmp = dir / "new.tmp";
    std::ofstream(tmp) << "new";
    try {
      commit_file(tmp, target);
      ADD_FAILURE() << "committed over " << kind;
    } catch (const StorageError& e) {
      EXPECT_EQ(e.kind(), StorageErrorKind::kRefused) << e.what();
      EXPECT_NE(std::string(e.what()).find("'" + target.string() + "': it is " + kind), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(tmp)) << "the uncommitted file is removed";
  }
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(fifo)));
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link)));
  EXPECT_EQ(slurp(real), "keep");
  fs::remove_all(dir);
}

TEST(DurableFile, OutputPathCheckRefusesSpecialFilesAndExistingFilesWithoutForce) {
  const fs::path dir = fresh_dir("output_check");
  const auto kind_of = [](const fs::path& path, ExistingOutput existing) {
    try {
      check_output_path(path, existing, "--force");
    } catch (const StorageError& e) {
      return std::string(to_string(e.kind())) + ": " + e.what();
    }
    return std::string("accepted");
  };
  EXPECT_EQ(kind_of(dir / "new.h5", ExistingOutput::kRefuse), "accepted");
  std::ofstream(dir / "old.h5") << "old";
  const std::string refused = kind_of(dir / "old.h5", ExistingOutput::kRefuse);
  EXPECT_EQ(refused.rfind("refused: ", 0), 0u) << refused;
  EXPECT_NE(refused.find((dir / "old.h5").string()), std::string::npos) << refused;
  EXPECT_NE(refused.find("pass --force"), std::string::npos) << refused;
  EXPECT_EQ(kind_of(dir / "old.h5", ExistingOutput::kReplace), "accepted");
  fs::create_symlink(dir / "old.h5", dir / "link.h5");
  EXPECT_EQ(kind_of(dir / "link.h5", ExistingOutput::kReplace).rfind("refused: ", 0), 0u) << "--force never replaces a link";
  fs::create_symlink("/etc/passwd", dir / "trap.h5.tmp");
  const std::string trap = kind_of(dir / "trap.h5", ExistingOutput::kReplace);
  EXPECT_NE(trap.find("trap.h5.tmp"), std::string::npos) << "its temporary would be written through the link: " << trap;
  fs::remove_all(dir);
}
