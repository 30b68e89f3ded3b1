// Tests of physical erasure and compaction: after either, the raw bytes of the file no longer
// hold an erased record's features or subject; other records, and their shard and slice, stay.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "storage/dataset.h"
#include "storage/erasure.h"
#include "storage/error.h"
#include "tests/storage/test_dataset_fixtures.h"

using namespace lethe::storage;
using namespace lethe::storage::dataset_testing;

namespace {

// Records 9k, 9k+3 and 9k+6 share the subject "subject-qzx-k".
std::string subject_of(uint64_t i) { return "subject-qzx-" + std::to_string(i / 9); }

// 600 records rec-i with distinctive features, subjects on records i % 3 == 0 (shared in threes),
// public when i % 50 == 1, in chunks of 64 records.
fs::path write_records(const fs::path& dir) {
  const fs::path path = dir / "records.h5";
  DatasetLayout layout;
  layout.seed = 11;
  layout.feature_shape = {28, 28};
  layout.chunk_records = 64;
  DatasetWriter writer(path, layout);
  for (uint64_t i = 0; i < 600; ++i)
    writer.append("rec-" + std::to_string(i), i % 3 == 0 ? subject_of(i) : "", static_cast<int32_t>(i % 10),
                  i % 50 == 1, distinctive_bytes(i, 784));
  writer.commit();
  return path;
}

std::set<std::string> ids_in(const Dataset& dataset, const RecordFilter& filter) {
  std::set<std::string> ids;
  for (const uint64_t row : dataset.select(filter)) ids.emplace(dataset.id(row));
  return ids;
}

bool contains_text(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST(Erasure, OverwritesFeaturesAndSubjectInPlace) {
  const fs::path dir = fresh_dir("erase_ids");
  const fs::path path = write_records(dir);
  const std::string before = slurp(path);
  // The scan is meaningful: the features and subject are in the file before erasure.
  ASSERT_TRUE(contains(before, distinctive_bytes(5, 784)));
  ASSERT_TRUE(contains(before, distinctive_bytes(300, 784)));
  ASSERT_TRUE(contains_text(before, subject_of(300)));

  const std::vector<std::string> ids{"rec-5", "rec-297", "rec-300", "rec-303", "rec-5"};
  const ErasureReport report = erase_records(path, ids);
  EXPECT_EQ(report.erased, (std::vector<std::string>{"rec-5", "rec-297", "rec-300", "rec-303"}));
  EXPECT_TRUE(report.already_erased.empty());
  EXPECT_EQ(report.feature_bytes_overwritten, 4u * 784);

  const std::string after = slurp(path);
  EXPECT_FALSE(contains(after, distinctive_bytes(5, 784)));
  EXPECT_FALSE(contains(after, distinctive_bytes(300, 784)));
  EXPECT_FALSE(contains_text(after, subject_of(300)));  // the subject of all three
  EXPECT_TRUE(contains(after, distinctive_bytes(4, 784)));
  EXPECT_TRUE(contains(after, distinctive_bytes(6, 784)));
  EXPECT_TRUE(contains(after, distinctive_bytes(301, 784)));

  const Dataset dataset = Dataset::open(path);
  EXPECT_EQ(dataset.tombstoned_count(), 4u);
  EXPECT_TRUE(dataset.is_tombstoned(dataset.row_of("rec-300")));
  EXPECT_EQ(dataset.subject(300), "");
  EXPECT_TRUE(dataset.rows_of_subject(subject_of(300)).empty());
  EXPECT_EQ(dataset.rows_of_subject(subject_of(306)), (std::vector<uint64_t>{306, 309, 312}));
  EXPECT_EQ(dataset.select({}).size(), 596u);
  std::vector<uint8_t> features(784);
  const std::vector<uint64_t> erased_row{5};
  dataset.read_features(erased_row, features);
  EXPECT_EQ(features, std::vector<uint8_t>(784, 0));
  const std::vector<uint64_t> neighbour{6};
  dataset.read_features(neighbour, features);  // still passes its Fletcher32 check
  EXPECT_EQ(features, distinctive_bytes(6, 784));
}

TEST(Erasure, RepeatedErasureReportsAlreadyErased) {
  const fs::path dir = fresh_dir("erase_again");
  const fs::path path = write_records(dir);
  const std::vector<std::string> ids{"rec-7"};
  (void)erase_records(path, ids);
  const ErasureReport again = erase_records(path, ids);
  EXPECT_TRUE(again.erased.empty());
  EXPECT_EQ(again.already_erased, ids);
}

TEST(Erasure, UnknownIdChangesNothing) {
  const fs::path dir = fresh_dir("erase_unknown");
  const fs::path path = write_records(dir);
  const std::string before = slurp(path);
  const std::vector<std::string> ids{"rec-2", "rec-does-not-exist"};
  try {
    (void)erase_records(path, ids);
    FAIL() << "an unknown id must be refused";
  } catch (const StorageError& e) {
    EXPECT_TRUE(contains_text(e.what(), "'rec-does-not-exist'")) << e.what();
    EXPECT_TRUE(contains_text(e.what(), path.string())) << e.what();
  }
  EXPECT_EQ(slurp(path), before);
  EXPECT_EQ(Dataset::open(path).tombstoned_count(), 0u);
}

TEST(Erasure, BySubjectErasesAllItsRecords) {
  const fs::path dir = fresh_dir("erase_subject");
  const fs::path path = write_records(dir);
  Dataset dataset = Dataset::open(path, /*writable=*/true);
  const auto rows = dataset.rows_of_subject(subject_of(0));
  ASSERT_EQ(rows, (std::vector<uint64_t>{0, 3, 6}));
  const ErasureReport report = erase_subject(dataset, subject_of(90));
  EXPECT_EQ(report.erased, (std::vector<std::string>{"rec-90", "rec-93", "rec-96"}));
  EXPECT_TRUE(dataset.is_tombstoned(96));
  EXPECT_TRUE(dataset.is_tombstoned(90));
  EXPECT_THROW((void)erase_subject(dataset, subject_of(90)), StorageError);
  EXPECT_THROW((void)erase_subject(dataset, "nobody"), StorageError);
  EXPECT_FALSE(contains(slurp(path), distinctive_bytes(90, 784)));
}

TEST(Erasure, PublicRecordsNeedExplicitPermission) {
  const fs::path dir = fresh_dir("erase_public");
  const fs::path path = write_records(dir);
  const std::vector<std::string> ids{"rec-51"};
  try {
    (void)erase_records(path, ids);
    FAIL() << "a public record must be refused";
  } catch (const StorageError& e) {
    EXPECT_TRUE(contains_text(e.what(), "'rec-51'")) << e.what();
    EXPECT_TRUE(contains_text(e.what(), "public")) << e.what();
  }
  EXPECT_EQ(Dataset::open(path).tombstoned_count(), 0u);
  EXPECT_EQ(erase_records(path, ids, {.allow_public = true}).erased, ids);
  EXPECT_EQ(Dataset::open(path).public_count(), 11u);
}

TEST(Erasure, ReadOnlyDatasetRefusesErasure) {
  const fs::path dir = fresh_dir("erase_readonly");
  Dataset dataset = Dataset::open(write_records(dir));
  const std::vector<uint64_t> rows{1};
  EXPECT_THROW((void)dataset.erase_rows(rows), std::logic_error);
}

TEST(Erasure, AssignmentsOfOtherRecordsSurviveErasureAndCompaction) {
  const fs::path dir = fresh_dir("erase_stable");
  const fs::path path = write_records(dir);
  std::map<std::pair<int, int>, std::set<std::string>> before;
  for (int shard = 0; shard < 4; ++shard)
    for (int slice = 0; slice < 3; ++slice)
      before[{shard, slice}] = ids_in(Dataset::open(path), {.shards = 4, .shard = shard, .slices = 3, .slice = slice});
  std::vector<std::string> erased;
  for (int i = 0; i < 600; i += 37) erased.push_back("rec-" + std::to_string(i));
  (void)erase_records(path, erased, {.allow_public = true});
  const auto expected = [&](std::set<std::string> ids) {
    for (const auto& id : erased) ids.erase(id);
    return ids;
  };
  for (const auto& [cell, ids] : before)
    EXPECT_EQ(ids_in(Dataset::open(path), {.shards = 4, .shard = cell.first, .slices = 3, .slice = cell.second}),
              expected(ids));

  const CompactionReport report = compact(path, 100);
  EXPECT_EQ(report.rows_before, 600u);
  EXPECT_EQ(report.removed, erased.size());
  EXPECT_EQ(report.rows_after, 600u - erased.size());
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  for (const auto& [cell, ids] : before)
    EXPECT_EQ(ids_in(Dataset::open(path), {.shards = 4, .shard = cell.first, .slices = 3, .slice = cell.second}),
              expected(ids));
}

TEST(Compaction, DropsTombstonedRowsAndKeepsTheRest) {
  const fs::path dir = fresh_dir("compact");
  const fs::path path = write_records(dir);
  const std::vector<std::string> ids{"rec-0", "rec-64", "rec-599"};
  (void)erase_records(path, ids);
  const CompactionReport report = compact(path);
  EXPECT_EQ(report.removed, 3u);
  const std::string bytes = slurp(path);
  for (const uint64_t i : {0, 64, 599}) EXPECT_FALSE(contains(bytes, distinctive_bytes(i, 784))) << i;
  EXPECT_FALSE(contains_text(bytes, "rec-599"));

  const Dataset dataset = Dataset::open(path);
  EXPECT_EQ(dataset.size(), 597u);
  EXPECT_EQ(dataset.tombstoned_count(), 0u);
  EXPECT_EQ(dataset.layout().seed, 11u);
  EXPECT_EQ(dataset.layout().chunk_records, 64u);
  EXPECT_FALSE(dataset.find("rec-64").has_value());
  for (uint64_t row = 0; row < dataset.size(); row += 41) {
    const uint64_t original = std::stoull(std::string(dataset.id(row)).substr(4));
    EXPECT_EQ(dataset.label(row), static_cast<int32_t>(original % 10));
    EXPECT_EQ(dataset.is_public(row), original % 50 == 1);
    EXPECT_EQ(dataset.subject(row), original % 3 == 0 ? subject_of(original) : "");
    std::vector<uint8_t> features(784);
    const std::vector<uint64_t> rows{row};
    dataset.read_features(rows, features);
    EXPECT_EQ(features, distinctive_bytes(original, 784));
  }
}

TEST(Dataset, CorruptedChunkIsDetectedByFletcher32) {
  const fs::path dir = fresh_dir("fletcher");
  const fs::path path = write_records(dir);
  std::string bytes = slurp(path);
  const std::vector<uint8_t> target = distinctive_bytes(200, 784);
  const size_t at = bytes.find(std::string(target.begin(), target.end()));
  ASSERT_NE(at, std::string::npos);
  bytes[at + 100] = static_cast<char>(bytes[at + 100] ^ 0x5a);
  write_file(path, bytes);
  const Dataset dataset = Dataset::open(path);
  std::vector<uint8_t> features(784);
  const std::vector<uint64_t> rows{200};
  try {
    dataset.read_features(rows, features);
    FAIL() << "a flipped byte must fail the checksum";
  } catch (const StorageError& e) {
    EXPECT_TRUE(contains_text(e.what(), path.string())) << e.what();
  }
}
