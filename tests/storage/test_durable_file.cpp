// Tests of the commit protocol primitives and the HDF5 string attributes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

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
