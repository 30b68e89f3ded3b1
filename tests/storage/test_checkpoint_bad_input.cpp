// Bad input to the checkpoint store: unknown names and versions, bad names, a corrupt manifest,
// altered or damaged files, files that are not checkpoints, and unwritable roots.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "storage/checkpoint_store.h"
#include "storage/hdf5.h"
#include "tests/storage/test_checkpoint_support.h"

using namespace lethe::storage;
using namespace lethe::storage::testing;

namespace {

// Runs `action`, which must throw StorageError, and returns its message.
std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const StorageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected StorageError";
  return "";
}

// A store with series "s" at versions 1 and 2 (tensor "w" from seeds 1 and 2).
CheckpointStore two_versions(const fs::path& root) {
  CheckpointStore store(root);
  (void)store.write("s", {distinctive_tensor("w", 1)}, {{"prefix", 1}});
  (void)store.write("s", {distinctive_tensor("w", 2)}, {{"prefix", 2}});
  return store;
}

void expect_previous_version_loads(const CheckpointStore& store) {
  const Checkpoint previous = store.load("s", 1);
  EXPECT_EQ(previous.tensor("w").bytes, distinctive_tensor("w", 1).bytes);
  EXPECT_EQ(previous.info.digest, store.versions("s").front().digest);
}

}  // namespace

TEST(CheckpointBadInput, UnknownNameOrVersionSaysWhatExists) {
  const fs::path root = fresh_dir("unknown");
  const CheckpointStore store = two_versions(root);
  const std::string no_series = error_of([&] { (void)store.load_latest("nope"); });
  EXPECT_TRUE(contains(no_series, "'nope' has no committed version")) << no_series;
  EXPECT_TRUE(contains(no_series, (root / "nope" / "MANIFEST.json").string())) << no_series;
  const std::string no_version = error_of([&] { (void)store.load("s", 5); });
  EXPECT_TRUE(contains(no_version, "no committed version 5")) << no_version;
  EXPECT_TRUE(contains(no_version, "committed versions: 1, 2")) << no_version;
  fs::remove_all(root);
}

TEST(CheckpointBadInput, InvalidNamesAreRefusedBeforeTouchingTheDisk) {
  const fs::path root = fresh_dir("names");
  CheckpointStore store(root);
  for (const std::string& name :
       std::vector<std::string>{"", ".", "..", "a/b", "../escape", ".hidden", "sp ace", std::string(201, 'x')}) {
    const std::string message = error_of([&] { (void)store.write(name, {distinctive_tensor("w", 1)}, {{"p", 1}}); });
    EXPECT_TRUE(contains(message, "checkpoint name '" + name + "' is invalid")) << message;
    EXPECT_THROW((void)store.load_latest(name), StorageError) << name;
  }
  EXPECT_TRUE(fs::is_empty(root));
  EXPECT_FALSE(fs::exists(root.parent_path() / "escape"));
  EXPECT_EQ(store.write("shard-3_seq.2", {distinctive_tensor("w", 1)}, {{"p", 1}}).version, 1);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, BadTensorsOrMetadataCommitNothing) {
  const fs::path root = fresh_dir("bad_tensors");
  CheckpointStore store(root);
  const std::string duplicate = error_of(
      [&] { (void)store.write("s", {distinctive_tensor("w", 1), distinctive_tensor("w", 2)}, {{"p", 1}}); });
  EXPECT_TRUE(contains(duplicate, "two tensors named 'w'")) << duplicate;
  TensorData short_tensor = distinctive_tensor("w", 1);
  short_tensor.bytes.pop_back();
  const std::string truncated = error_of([&] { (void)store.write("s", {short_tensor}, {{"p", 1}}); });
  EXPECT_TRUE(contains(truncated, "tensor 'w' of shape [16,16]")) << truncated;
  const std::string not_object = error_of([&] { (void)store.write("s", {distinctive_tensor("w", 1)}, 42); });
  EXPECT_TRUE(contains(not_object, "must be a JSON object")) << not_object;
  EXPECT_TRUE(store.versions("s").empty());
  for (const auto& entry : fs::recursive_directory_iterator(root))
    EXPECT_FALSE(entry.is_regular_file()) << "left behind: " << entry.path();
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 1)}, {{"p", 1}}).version, 1);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, CorruptManifestNamesItAndSaysWhatToDo) {
  const fs::path root = fresh_dir("manifest");
  CheckpointStore store = two_versions(root);
  const fs::path manifest = root / "s" / "MANIFEST.json";
  std::vector<std::byte> text = slurp(manifest);
  text.resize(text.size() / 2);  // truncated JSON
  spit(manifest, text);
  for (const std::string& message :
       {error_of([&] { (void)store.load_latest("s"); }), error_of([&] { (void)store.versions("s"); }),
        error_of([&] { (void)store.write("s", {distinctive_tensor("w", 3)}, {{"p", 3}}); }),
        error_of([&] { store.purge("s", 1); })}) {
    EXPECT_TRUE(contains(message, "checkpoint manifest '" + manifest.string() + "' is malformed JSON")) << message;
    EXPECT_TRUE(contains(message, "restore it from a backup")) << message;
  }
  EXPECT_EQ(slurp(manifest), text);  // a writer never overwrites what it cannot read
  EXPECT_TRUE(fs::exists(root / "s" / "v000002.h5"));

  std::ofstream(manifest, std::ios::trunc) << R"({"format":"lethe-checkpoint-manifest","format_version":1,)"
                                           << R"("name":"t","next_version":1,"versions":[]})";
  const std::string wrong_series = error_of([&] { (void)store.versions("s"); });
  EXPECT_TRUE(contains(wrong_series, "names series 't', not 's'")) << wrong_series;
  fs::remove_all(root);
}

TEST(CheckpointBadInput, FlippedByteFailsFletcher32NamingFileAndVersionAndThePreviousVersionLoads) {
  const fs::path root = fresh_dir("flip");
  const CheckpointStore store = two_versions(root);
  const fs::path v2 = root / "s" / "v000002.h5";
  flip_byte_of(v2, distinctive_tensor("w", 2).bytes);
  const std::string message = error_of([&] { (void)store.load_latest("s"); });
  EXPECT_TRUE(contains(message, "checkpoint 's' version 2 cannot be loaded")) << message;
  EXPECT_TRUE(contains(message, "checkpoint file '" + v2.string() + "' cannot be read")) << message;
  EXPECT_TRUE(contains(message, "tensor 'w' (dataset 'tensor_000000') cannot be read")) << message;
  EXPECT_TRUE(contains(message, "Fletcher32")) << message;
  EXPECT_TRUE(contains(message, "other committed versions of 's': 1;")) << message;
  expect_previous_version_loads(store);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, RewrittenTensorWithValidChecksumsFailsTheDigest) {
  const fs::path root = fresh_dir("rewrite");
  const CheckpointStore store = two_versions(root);
  const fs::path v2 = root / "s" / "v000002.h5";
  {  // an edit through HDF5 itself: Fletcher32 is recomputed, only the digest can tell
    h5::File file = h5::open_file(v2.string(), true);
    h5::Dataset dataset(H5Dopen2(file.get(), "tensor_000000", H5P_DEFAULT));
    ASSERT_TRUE(dataset);
    const std::vector<float> other = distinctive_tensor("w", 99).floats();
    ASSERT_GE(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, other.data()), 0);
  }
  const std::string message = error_of([&] { (void)store.load("s", 2); });
  EXPECT_TRUE(contains(message, "checkpoint 's' version 2 cannot be loaded")) << message;
  EXPECT_TRUE(contains(message, "checkpoint file '" + v2.string() + "' fails its SHA-256 check")) << message;
  expect_previous_version_loads(store);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, RewrittenMetadataFailsTheDigest) {
  const fs::path root = fresh_dir("metadata");
  const CheckpointStore store = two_versions(root);
  const fs::path v2 = root / "s" / "v000002.h5";
  {
    h5::File file = h5::open_file(v2.string(), true);
    h5::write_string_attribute(file.get(), "metadata", R"({"prefix":1})");
  }
  const std::string message = error_of([&] { (void)store.load_latest("s"); });
  EXPECT_TRUE(contains(message, "fails its SHA-256 check")) << message;
  EXPECT_TRUE(contains(message, v2.string())) << message;
  expect_previous_version_loads(store);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, FileSwappedForAnotherVersionDoesNotMatchTheManifest) {
  const fs::path root = fresh_dir("swap");
  const CheckpointStore store = two_versions(root);
  fs::copy_file(root / "s" / "v000001.h5", root / "s" / "v000002.h5", fs::copy_options::overwrite_existing);
  const std::string message = error_of([&] { (void)store.load("s", 2); });
  EXPECT_TRUE(contains(message, "holds series 's' version 1")) << message;
  fs::remove(root / "s" / "v000002.h5");
  const std::string missing = error_of([&] { (void)store.load("s", 2); });
  EXPECT_TRUE(contains(missing, "listed in the manifest but its file is missing")) << missing;
  expect_previous_version_loads(store);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, FilesThatAreNotCheckpointsAreRefused) {
  const fs::path root = fresh_dir("not_checkpoint");
  const CheckpointStore store = two_versions(root);
  const fs::path text = root / "notes.txt";
  std::ofstream(text) << "not hdf5";
  const std::string not_hdf5 = error_of([&] { (void)read_checkpoint_file(text); });
  EXPECT_TRUE(contains(not_hdf5, "'" + text.string() + "' is not an HDF5 file")) << not_hdf5;

  const fs::path plain = root / "plain.h5";
  { h5::File file = h5::create_file(plain.string()); }
  const std::string not_lethe = error_of([&] { (void)read_checkpoint_file(plain); });
  EXPECT_TRUE(contains(not_lethe, "'" + plain.string() + "' is an HDF5 file but not a lethe checkpoint")) << not_lethe;

  fs::copy_file(plain, root / "s" / "v000002.h5", fs::copy_options::overwrite_existing);
  const std::string in_store = error_of([&] { (void)store.load_latest("s"); });
  EXPECT_TRUE(contains(in_store, "checkpoint 's' version 2")) << in_store;
  EXPECT_TRUE(contains(in_store, "not a lethe checkpoint")) << in_store;
  expect_previous_version_loads(store);
  fs::remove_all(root);
}

TEST(CheckpointBadInput, FilesTheManifestDoesNotListAreNeverLoadedAndAreShreddedByTheNextWrite) {
  const fs::path root = fresh_dir("stray");
  CheckpointStore store = two_versions(root);
  const fs::path stray = root / "s" / "v000009.h5";
  fs::copy_file(root / "s" / "v000002.h5", stray);
  std::ofstream(root / "s" / "v000003.h5.tmp") << "half written";
  EXPECT_EQ(store.versions("s").size(), 2u);
  EXPECT_THROW((void)store.load("s", 9), StorageError);
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 3)}, {{"prefix", 3}}).version, 3);
  EXPECT_FALSE(fs::exists(stray));
  EXPECT_FALSE(fs::exists(root / "s" / "v000003.h5.tmp"));
  EXPECT_EQ(files_containing(root, distinctive_tensor("w", 2).bytes), std::vector<fs::path>{root / "s" / "v000002.h5"});
  fs::remove_all(root);
}

TEST(CheckpointBadInput, UnwritableRootIsReportedWithItsPath) {
  const fs::path dir = fresh_dir("unwritable");
  const fs::path file = dir / "a_file";
  std::ofstream(file) << "x";
  const std::string under_file = error_of([&] { CheckpointStore store(file / "checkpoints"); });
  EXPECT_TRUE(contains(under_file, "cannot create checkpoint root '" + (file / "checkpoints").string() + "'"))
      << under_file;
  EXPECT_TRUE(contains(under_file, "choose a writable directory")) << under_file;
  const std::string is_file = error_of([&] { CheckpointStore store(file); });
  EXPECT_TRUE(contains(is_file, "exists but is not a directory")) << is_file;

  // The series directory cannot be created (its name is taken by a file): write names it.
  CheckpointStore store(dir);
  const std::string series = error_of([&] { (void)store.write("a_file", {distinctive_tensor("w", 1)}, {{"p", 1}}); });
  EXPECT_TRUE(contains(series, "cannot create checkpoint directory '" + file.string() + "'")) << series;
  fs::remove_all(dir);
}
