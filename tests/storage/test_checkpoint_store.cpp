// Tests of the checkpoint store: round trips, versions, listings, digests, the HDF5 layout,
// purging (bytes gone from disk) and concurrent writers of different series.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "storage/checkpoint_store.h"
#include "storage/hashing.h"
#include "storage/hdf5.h"
#include "tests/storage/test_checkpoint_support.h"

using namespace lethe::storage;
using namespace lethe::storage::testing;

namespace {

nlohmann::json trained_on(int shard, int sequence, int prefix) {
  return {{"shard", shard},  {"sequence", sequence}, {"prefix", prefix},
          {"slices", {2, 0, 1}}, {"data_version", 7}, {"seeds", {{"init", 11}, {"noise", 13}}}};
}

}  // namespace

TEST(Checkpoint, WriteThenLoadRoundTripsEveryTypeAndTheMetadata) {
  const fs::path root = fresh_dir("roundtrip");
  CheckpointStore store(root);
  const std::vector<double> doubles = {3.25};
  const std::vector<std::int64_t> longs = {-5, 1LL << 40, 7};
  const std::vector<std::int32_t> ints = {1, -2, 3, -4};
  const std::vector<std::uint8_t> small = {0, 255, 17};
  const std::vector<TensorData> tensors = {
      distinctive_tensor("adapter.1.lora_A", 1),
      TensorData::from_values<double>("temperature", {}, doubles),  // a scalar
      TensorData::from_values<std::int64_t>("steps", {3}, longs),
      TensorData::from_values<std::int32_t>("order", {2, 2}, ints),
      TensorData::from_values<std::uint8_t>("mask", {3, 1}, small),
      TensorData::from_floats("empty", {0, 4}, {}),
  };
  const CheckpointInfo info = store.write("shard0-seq1", tensors, trained_on(0, 1, 2));
  EXPECT_EQ(info.name, "shard0-seq1");
  EXPECT_EQ(info.version, 1);
  EXPECT_EQ(info.digest.size(), 64u);
  EXPECT_EQ(info.digest, checkpoint_digest(tensors, trained_on(0, 1, 2)));
  EXPECT_EQ(info.path, root / "shard0-seq1" / "v000001.h5");
  EXPECT_TRUE(fs::exists(info.path));
  EXPECT_TRUE(fs::exists(root / "shard0-seq1" / "MANIFEST.json"));
  EXPECT_EQ(info.created.size(), 20u) << info.created;  // 2026-11-23T09:15:42Z

  const Checkpoint loaded = store.load_latest("shard0-seq1");
  EXPECT_EQ(loaded.info.version, 1);
  EXPECT_EQ(loaded.info.digest, info.digest);
  EXPECT_EQ(loaded.info.metadata, trained_on(0, 1, 2));
  EXPECT_EQ(loaded.info.created, info.created);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(loaded.tensors[i].name, tensors[i].name);
    EXPECT_EQ(loaded.tensors[i].type, tensors[i].type);
    EXPECT_EQ(loaded.tensors[i].shape, tensors[i].shape);
    EXPECT_EQ(loaded.tensors[i].bytes, tensors[i].bytes) << tensors[i].name;
  }
  EXPECT_EQ(loaded.tensor("steps").values<std::int64_t>(), longs);
  EXPECT_EQ(loaded.tensor("temperature").values<double>(), doubles);
  EXPECT_EQ(loaded.tensor("adapter.1.lora_A").floats(), tensors[0].floats());

  // Metadata is kept as JSON text; a value JSON cannot hold (NaN) is stored as it reloads (null).
  const CheckpointInfo odd = store.write("shard0-seq1", tensors, {{"lr", 0.1}, {"loss", std::nan("")}});
  EXPECT_EQ(odd.metadata, (nlohmann::json{{"lr", 0.1}, {"loss", nullptr}}));
  EXPECT_EQ(store.load("shard0-seq1", 2).info.metadata, odd.metadata);
  fs::remove_all(root);
}

TEST(Checkpoint, VersionsIncreaseAndLatestIsTheHighestCommitted) {
  const fs::path root = fresh_dir("versions");
  CheckpointStore store(root);
  for (int prefix = 1; prefix <= 3; ++prefix) {
    const CheckpointInfo info =
        store.write("s", {distinctive_tensor("head", static_cast<std::uint32_t>(prefix))}, trained_on(0, 0, prefix));
    EXPECT_EQ(info.version, prefix);
  }
  const std::vector<CheckpointInfo> listed = store.versions("s");
  ASSERT_EQ(listed.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(listed[i].version, i + 1);
    EXPECT_EQ(listed[i].metadata.at("prefix"), i + 1);
  }
  EXPECT_EQ(store.load_latest("s").info.version, 3);
  EXPECT_EQ(store.load("s", 2).tensor("head").bytes, distinctive_tensor("head", 2).bytes);
  // A second store over the same root (another process, a restart) sees the same history.
  CheckpointStore reopened(root);
  EXPECT_EQ(reopened.load_latest("s").info.digest, listed[2].digest);
  EXPECT_TRUE(reopened.versions("never-written").empty());
  fs::remove_all(root);
}

TEST(Checkpoint, ListingsCarryTrainingMetadataSoADeletionFindsWhatToPurge) {
  const fs::path root = fresh_dir("listing");
  CheckpointStore store(root);
  for (int shard = 0; shard < 2; ++shard)
    for (int prefix = 1; prefix <= 3; ++prefix)
      (void)store.write("shard" + std::to_string(shard), {distinctive_tensor("head", 10 * shard + prefix)},
                        trained_on(shard, 0, prefix));
  EXPECT_EQ(store.names(), (std::vector<std::string>{"shard0", "shard1"}));
  // S3T deletion of slice 0 (position 2 in this sequence) purges prefixes 2 and 3.
  std::vector<int> influenced;
  for (const CheckpointInfo& info : store.versions("shard1")) {
    const std::vector<int> slices = info.metadata.at("slices").get<std::vector<int>>();
    const int position = static_cast<int>(std::find(slices.begin(), slices.end(), 0) - slices.begin()) + 1;
    if (info.metadata.at("prefix").get<int>() >= position) influenced.push_back(info.version);
  }
  EXPECT_EQ(influenced, (std::vector<int>{2, 3}));
  for (int version : influenced) store.purge("shard1", version);
  ASSERT_EQ(store.versions("shard1").size(), 1u);
  EXPECT_EQ(store.load_latest("shard1").info.metadata.at("prefix"), 1);
  EXPECT_EQ(store.versions("shard0").size(), 3u);
  fs::remove_all(root);
}

TEST(Checkpoint, PurgeLeavesNoFileUnderTheRootWithTheCheckpointsBytes) {
  const fs::path root = fresh_dir("purge");
  CheckpointStore store(root);
  const TensorData kept = distinctive_tensor("head", 100);
  const TensorData doomed = distinctive_tensor("head", 200);
  (void)store.write("s", {kept}, trained_on(0, 0, 1));
  const CheckpointInfo purged = store.write("s", {doomed}, {{"prefix", 2}, {"tag", "doomed-metadata-7f3a"}});
  ASSERT_EQ(files_containing(root, doomed.bytes), std::vector<fs::path>{purged.path});  // the scan can see it

  store.purge("s", 2);
  EXPECT_TRUE(files_containing(root, doomed.bytes).empty());
  const std::string tag = "doomed-metadata-7f3a";
  EXPECT_TRUE(files_containing(root, std::vector<std::byte>(reinterpret_cast<const std::byte*>(tag.data()),
                                                            reinterpret_cast<const std::byte*>(tag.data()) + tag.size()))
                  .empty());
  EXPECT_FALSE(fs::exists(purged.path));
  ASSERT_EQ(store.versions("s").size(), 1u);
  EXPECT_EQ(store.load_latest("s").tensor("head").bytes, kept.bytes);
  EXPECT_THROW((void)store.load("s", 2), StorageError);
  fs::remove_all(root);
}

TEST(Checkpoint, VersionsAreNeverReusedAfterPurgeAndPurgeIsIdempotent) {
  const fs::path root = fresh_dir("reuse");
  CheckpointStore store(root);
  (void)store.write("s", {distinctive_tensor("w", 1)}, trained_on(0, 0, 1));
  (void)store.write("s", {distinctive_tensor("w", 2)}, trained_on(0, 0, 2));
  store.purge("s", 2);
  store.purge("s", 2);  // a replayed deletion: nothing left to do, no error
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 3)}, trained_on(0, 0, 2)).version, 3);

  const TensorData last = distinctive_tensor("w", 4);
  EXPECT_EQ(store.write("s", {last}, trained_on(0, 0, 3)).version, 4);
  store.purge_all("s");
  EXPECT_TRUE(store.versions("s").empty());
  EXPECT_TRUE(files_containing(root, last.bytes).empty());
  EXPECT_THROW((void)store.load_latest("s"), StorageError);
  store.purge_all("s");
  EXPECT_EQ(store.write("s", {distinctive_tensor("w", 5)}, trained_on(0, 0, 1)).version, 5);
  fs::remove_all(root);
}

TEST(Checkpoint, PurgeOfAVersionNeverWrittenIsAnError) {
  const fs::path root = fresh_dir("purge_unknown");
  CheckpointStore store(root);
  (void)store.write("s", {distinctive_tensor("w", 1)}, trained_on(0, 0, 1));
  try {
    store.purge("s", 9);
    FAIL() << "expected StorageError";
  } catch (const StorageError& e) {
    EXPECT_TRUE(contains(e.what(), "never had a version 9")) << e.what();
    EXPECT_TRUE(contains(e.what(), (root / "s").string())) << e.what();
  }
  EXPECT_THROW(store.purge_all("absent"), StorageError);
  EXPECT_EQ(store.versions("s").size(), 1u);
  fs::remove_all(root);
}

TEST(Checkpoint, DigestIsDeterministicAndCoversNamesTypesShapesBytesAndMetadata) {
  // FIPS 180-2 test vector, so the digest is SHA-256 and not something else.
  const std::string abc = "abc";
  EXPECT_EQ(sha256_hex(std::as_bytes(std::span(abc))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::vector<TensorData> base = {distinctive_tensor("w", 1)};
  const nlohmann::json meta = trained_on(0, 0, 1);
  const std::string digest = checkpoint_digest(base, meta);
  EXPECT_EQ(digest, checkpoint_digest(base, meta));

  std::vector<TensorData> renamed = base;
  renamed[0].name = "v";
  std::vector<TensorData> reshaped = base;
  reshaped[0].shape = {256};
  std::vector<TensorData> retyped = base;
  retyped[0].type = TensorType::kInt32;
  std::vector<TensorData> altered = base;
  altered[0].bytes[17] ^= std::byte{1};
  nlohmann::json other_meta = meta;
  other_meta["prefix"] = 2;
  for (const auto& [what, d] : std::vector<std::pair<std::string, std::string>>{
           {"name", checkpoint_digest(renamed, meta)},
           {"shape", checkpoint_digest(reshaped, meta)},
           {"type", checkpoint_digest(retyped, meta)},
           {"bytes", checkpoint_digest(altered, meta)},
           {"metadata", checkpoint_digest(base, other_meta)}})
    EXPECT_NE(d, digest) << "digest ignores the " << what;
}

TEST(Checkpoint, TensorsAreChunkedDatasetsWithFletcher32AndNoCompression) {
  const fs::path root = fresh_dir("layout");
  CheckpointStore store(root);
  std::vector<float> large(600000, 1.5f);  // 2.4 MB: more than one 1 MiB chunk
  const CheckpointInfo info = store.write(
      "s", {distinctive_tensor("w", 1), TensorData::from_floats("large", {600, 1000}, large)}, trained_on(0, 0, 1));
  h5::File file = h5::open_file(info.path.string(), false);
  for (const char* object : {"tensor_000000", "tensor_000001"}) {
    h5::Dataset dataset(H5Dopen2(file.get(), object, H5P_DEFAULT));
    ASSERT_TRUE(dataset) << object;
    h5::PropList create(H5Dget_create_plist(dataset.get()));
    EXPECT_EQ(H5Pget_layout(create.get()), H5D_CHUNKED) << object;
    ASSERT_EQ(H5Pget_nfilters(create.get()), 1) << object;
    unsigned flags = 0;
    size_t nvalues = 0;
    EXPECT_EQ(H5Pget_filter2(create.get(), 0, &flags, &nvalues, nullptr, 0, nullptr, nullptr), H5Z_FILTER_FLETCHER32);
  }
  EXPECT_EQ(h5::read_string_attribute(file.get(), "digest"), info.digest);
  EXPECT_EQ(nlohmann::json::parse(h5::read_string_attribute(file.get(), "metadata")), trained_on(0, 0, 1));
  file.reset();
  EXPECT_EQ(store.load_latest("s").tensor("large").floats(), large);
  fs::remove_all(root);
}

TEST(Checkpoint, DifferentSeriesAreWrittenConcurrentlyBySeparateProcesses) {
  const fs::path root = fresh_dir("concurrent");
  constexpr int kRanks = 4;
  constexpr int kVersions = 3;
  std::vector<pid_t> children;
  for (int rank = 0; rank < kRanks; ++rank) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // a rank: its own store object, its own series, no locks
      int status = 0;
      try {
        CheckpointStore store(root);
        for (int v = 1; v <= kVersions; ++v)
          if (store.write("rank" + std::to_string(rank), {distinctive_tensor("w", 100 * rank + v)},
                          trained_on(rank, 0, v)).version != v)
            status = 3;
      } catch (...) {
        status = 2;
      }
      ::_exit(status);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  CheckpointStore store(root);
  ASSERT_EQ(store.names().size(), static_cast<std::size_t>(kRanks));
  for (int rank = 0; rank < kRanks; ++rank) {
    const std::string name = "rank" + std::to_string(rank);
    ASSERT_EQ(store.versions(name).size(), static_cast<std::size_t>(kVersions)) << name;
    for (int v = 1; v <= kVersions; ++v)
      EXPECT_EQ(store.load(name, v).tensor("w").bytes, distinctive_tensor("w", 100 * rank + v).bytes) << name;
  }
  fs::remove_all(root);
}

TEST(Checkpoint, TensorHelpersCheckShapesTypesAndNames) {
  const std::vector<float> three = {1, 2, 3};
  EXPECT_THROW((void)TensorData::from_floats("w", {2, 2}, three), StorageError);
  EXPECT_THROW((void)TensorData::from_floats("", {3}, three), StorageError);
  EXPECT_THROW((void)TensorData::from_floats("w", {-1, -3}, three), StorageError);
  const TensorData w = TensorData::from_floats("w", {3}, three);
  EXPECT_EQ(w.element_count(), 3);
  EXPECT_THROW((void)w.values<std::int32_t>(), StorageError);
  EXPECT_EQ(parse_tensor_type("uint8"), TensorType::kUInt8);
  EXPECT_THROW((void)parse_tensor_type("bfloat16"), StorageError);
  const Checkpoint checkpoint{{"s", 1, "", {}, "/x/v000001.h5", ""}, {w}};
  try {
    (void)checkpoint.tensor("head");
    FAIL() << "expected StorageError";
  } catch (const StorageError& e) {
    EXPECT_TRUE(contains(e.what(), "no tensor 'head'")) << e.what();
    EXPECT_TRUE(contains(e.what(), "it has: w")) << e.what();
  }
}
