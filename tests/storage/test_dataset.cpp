// Tests of the dataset store: keyed record assignment, the writer's commit protocol, the
// reader's index, filters, streaming and feature reads, and the errors for foreign files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#include "storage/dataset.h"
#include "storage/error.h"
#include "storage/hdf5.h"
#include "storage/record_assignment.h"
#include "tests/storage/test_dataset_fixtures.h"

using namespace lethe::storage;
using namespace lethe::storage::dataset_testing;

namespace {

// Chi-square statistic of `counts` against a uniform expectation.
double chi_square(const std::vector<uint64_t>& counts) {
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  const double expected = total / static_cast<double>(counts.size());
  double statistic = 0;
  for (const uint64_t c : counts) statistic += (c - expected) * (c - expected) / expected;
  return statistic;
}

std::string id_of(uint64_t i) { return "rec-" + std::to_string(i); }

DatasetLayout image_layout(uint64_t chunk_records = 256) {
  DatasetLayout layout;
  layout.seed = 42;
  layout.feature_shape = {28, 28};
  layout.chunk_records = chunk_records;
  layout.source = "unit test";
  return layout;
}

// Writes `count` records: id rec-i, subject "s<i % 7>" for even i, label i % 10, public when i % 5 == 0.
fs::path write_sample(const fs::path& dir, uint64_t count, uint64_t chunk_records = 256) {
  const fs::path path = dir / "sample.h5";
  DatasetWriter writer(path, image_layout(chunk_records));
  for (uint64_t i = 0; i < count; ++i)
    writer.append(id_of(i), i % 2 == 0 ? "s" + std::to_string(i % 7) : "", static_cast<int32_t>(i % 10), i % 5 == 0,
                  distinctive_bytes(i, 784));
  writer.commit();
  return path;
}

}  // namespace

TEST(RecordAssignment, SipHashMatchesReferenceVectors) {
  // Vectors of the SipHash-2-4 reference code: key 00..0f, message 00..(n-1).
  const uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
  std::vector<uint8_t> message(64);
  std::iota(message.begin(), message.end(), 0);
  EXPECT_EQ(siphash24(k0, k1, {message.data(), 0}), 0x726fdb47dd0e0e31ULL);
  EXPECT_EQ(siphash24(k0, k1, {message.data(), 8}), 0x93f5f5799a932462ULL);
  EXPECT_EQ(siphash24(k0, k1, {message.data(), 15}), 0xa129ca6149be45e5ULL);
  EXPECT_EQ(siphash24(k0, k1, {message.data(), 63}), 0x958a324ceb064572ULL);
}

TEST(RecordAssignment, ShardsAndSlicesAreNearUniformForAnyCounts) {
  const RecordAssigner assigner(2024);
  // Critical chi-square values at p = 0.001 for the degrees of freedom of each grid.
  const std::vector<std::tuple<int, int, double>> grids{{7, 5, 65.25}, {3, 4, 31.26}, {16, 10, 212.0}, {1, 1, 0.0}};
  for (const auto& [shards, slices, critical] : grids) {
    std::vector<uint64_t> counts(static_cast<size_t>(shards * slices), 0);
    for (int i = 0; i < 60000; ++i) {
      const Assignment a = assigner.assign(id_of(i), shards, slices);
      ASSERT_GE(a.shard, 0);
      ASSERT_LT(a.shard, shards);
      ASSERT_GE(a.slice, 0);
      ASSERT_LT(a.slice, slices);
      ++counts[a.shard * slices + a.slice];
    }
    EXPECT_LE(chi_square(counts), critical) << shards << " shards x " << slices << " slices";
  }
}

TEST(RecordAssignment, IsAFunctionOfSeedAndIdOnly) {
  const RecordAssigner a(1), b(1), other(2);
  int moved_by_seed = 0;
  for (int i = 0; i < 2000; ++i) {
    EXPECT_EQ(a.assign(id_of(i), 8, 4), b.assign(id_of(i), 8, 4));
    EXPECT_EQ(a.assign(id_of(i), 8, 4), assign(1, id_of(i), 8, 4));
    if (a.shard_of(id_of(i), 8) != other.shard_of(id_of(i), 8)) ++moved_by_seed;
  }
  // Another key reassigns about 7/8 of the records.
  EXPECT_GT(moved_by_seed, 1600);
  EXPECT_LT(moved_by_seed, 1900);
  EXPECT_THROW((void)a.assign("x", 0, 1), std::invalid_argument);
  EXPECT_THROW((void)a.assign("x", 1, -1), std::invalid_argument);
}

TEST(RecordAssignment, PublicFractionIsDeterministicAndNearTheTarget) {
  const RecordAssigner assigner(9);
  int public_count = 0;
  for (int i = 0; i < 60000; ++i) {
    const bool flag = assigner.is_public(id_of(i), 0.1);
    EXPECT_EQ(flag, is_public(9, id_of(i), 0.1));
    public_count += flag;
  }
  EXPECT_NEAR(public_count, 6000, 300);  // about 4 standard deviations
  EXPECT_FALSE(assigner.is_public("rec-1", 0.0));
  EXPECT_TRUE(assigner.is_public("rec-1", 1.0));
  EXPECT_THROW((void)assigner.is_public("rec-1", 1.5), std::invalid_argument);
  // Public and shard decisions use independent keys: public records spread over all shards.
  std::set<int> shards_of_public;
  for (int i = 0; i < 2000; ++i)
    if (assigner.is_public(id_of(i), 0.1)) shards_of_public.insert(assigner.shard_of(id_of(i), 4));
  EXPECT_EQ(shards_of_public.size(), 4u);
}

TEST(Dataset, WriterRoundTripsIndexAndFeatures) {
  const fs::path dir = fresh_dir("roundtrip");
  const fs::path path = write_sample(dir, 3000);
  EXPECT_FALSE(fs::exists(dir / "sample.h5.tmp"));
  const Dataset dataset = Dataset::open(path);
  EXPECT_EQ(dataset.size(), 3000u);
  EXPECT_EQ(dataset.layout().seed, 42u);
  EXPECT_EQ(dataset.layout().feature_shape, (std::vector<uint64_t>{28, 28}));
  EXPECT_EQ(dataset.layout().chunk_records, 256u);
  EXPECT_EQ(dataset.layout().source, "unit test");
  EXPECT_EQ(dataset.tombstoned_count(), 0u);
  EXPECT_EQ(dataset.public_count(), 600u);
  EXPECT_EQ(dataset.subject_count(), 7u);
  EXPECT_EQ(dataset.id(1234), "rec-1234");
  EXPECT_EQ(dataset.label(1234), 4);
  EXPECT_EQ(dataset.subject(1234), "s2");
  EXPECT_EQ(dataset.subject(1235), "");
  EXPECT_TRUE(dataset.is_public(1235));
  EXPECT_EQ(dataset.row_of("rec-2999"), 2999u);
  EXPECT_FALSE(dataset.find("rec-3000").has_value());
  try {
    (void)dataset.row_of("nope");
    FAIL() << "row_of an unknown id must throw";
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  const auto subject_rows = dataset.rows_of_subject("s3");
  EXPECT_FALSE(subject_rows.empty());
  for (const uint64_t row : subject_rows) EXPECT_EQ(row % 14, 10u);  // even rows with row % 7 == 3

  // Consecutive rows across chunk boundaries, scattered rows in any order, repeats.
  const std::vector<uint64_t> runs{250, 251, 252, 253, 254, 255, 256, 257};
  const std::vector<uint64_t> scattered{2999, 0, 1500, 7, 1500, 511, 512};
  for (const auto& rows : {runs, scattered}) {
    std::vector<uint8_t> out(rows.size() * 784);
    dataset.read_features(rows, out);
    for (size_t i = 0; i < rows.size(); ++i)
      EXPECT_EQ(std::vector<uint8_t>(out.begin() + i * 784, out.begin() + (i + 1) * 784), distinctive_bytes(rows[i], 784))
          << "row " << rows[i];
  }
  std::vector<uint8_t> too_small(10);
  EXPECT_THROW(dataset.read_features(runs, too_small), std::invalid_argument);
  const std::vector<uint64_t> out_of_range{3000};
  std::vector<uint8_t> one(784);
  EXPECT_THROW(dataset.read_features(out_of_range, one), std::out_of_range);
}

TEST(Dataset, StreamVisitsFilteredRecordsInBatches) {
  const fs::path dir = fresh_dir("stream");
  const Dataset dataset = Dataset::open(write_sample(dir, 1000, 64));
  RecordFilter private_only;
  private_only.public_records = PublicRecords::exclude;
  RecordStream stream = dataset.stream(private_only, 96);
  EXPECT_EQ(stream.total(), 800u);
  RecordBatch batch;
  uint64_t seen = 0, batches = 0, previous = 0;
  while (stream.next(batch)) {
    ++batches;
    EXPECT_LE(batch.size(), 96u);
    EXPECT_EQ(batch.features.size(), batch.size() * 784);
    for (size_t i = 0; i < batch.size(); ++i) {
      const uint64_t row = batch.rows[i];
      EXPECT_NE(row % 5, 0u);
      if (seen > 0) EXPECT_GT(row, previous);
      previous = row;
      EXPECT_EQ(batch.labels[i], static_cast<int32_t>(row % 10));
      EXPECT_TRUE(std::equal(batch.features.begin() + i * 784, batch.features.begin() + (i + 1) * 784,
                             distinctive_bytes(row, 784).begin()));
      ++seen;
    }
  }
  EXPECT_EQ(seen, 800u);
  EXPECT_EQ(batches, 9u);
  EXPECT_TRUE(batch.rows.empty());

  RecordFilter only_public;
  only_public.public_records = PublicRecords::only;
  EXPECT_EQ(dataset.select(only_public).size(), 200u);

  // Shard k of m, and slice s of L within it, partition the records exactly.
  std::vector<uint64_t> all;
  for (int shard = 0; shard < 3; ++shard) {
    uint64_t in_shard = 0;
    RecordFilter by_shard;
    by_shard.shards = 3;
    by_shard.shard = shard;
    const auto shard_rows = dataset.select(by_shard);
    for (int slice = 0; slice < 4; ++slice) {
      RecordFilter by_slice = by_shard;
      by_slice.slices = 4;
      by_slice.slice = slice;
      const auto rows = dataset.select(by_slice);
      in_shard += rows.size();
      for (const uint64_t row : rows) EXPECT_EQ(dataset.assigner().assign(dataset.id(row), 3, 4), (Assignment{shard, slice}));
      all.insert(all.end(), rows.begin(), rows.end());
    }
    EXPECT_EQ(in_shard, shard_rows.size());
  }
  std::sort(all.begin(), all.end());
  std::vector<uint64_t> expected(1000);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(all, expected);
  RecordFilter bad;
  bad.shards = 3;
  bad.shard = 3;
  EXPECT_THROW((void)dataset.select(bad), std::invalid_argument);
}

TEST(Dataset, Float32FeaturesRoundTrip) {
  const fs::path dir = fresh_dir("float");
  const fs::path path = dir / "float.h5";
  DatasetLayout layout;
  layout.feature_type = FeatureType::float32;
  layout.feature_shape = {3};
  {
    DatasetWriter writer(path, layout);
    for (int i = 0; i < 10; ++i) {
      const float values[3] = {i * 0.5f, -1.25f, 1e6f + i};
      writer.append("f" + std::to_string(i), "", i, false, {reinterpret_cast<const uint8_t*>(values), 12});
    }
    writer.commit();
  }
  const Dataset dataset = Dataset::open(path);
  EXPECT_EQ(dataset.layout().feature_type, FeatureType::float32);
  EXPECT_EQ(dataset.layout().bytes_per_record(), 12u);
  const std::vector<uint64_t> rows{7};
  float values[3];
  dataset.read_features(rows, {reinterpret_cast<uint8_t*>(values), 12});
  EXPECT_FLOAT_EQ(values[0], 3.5f);
  EXPECT_FLOAT_EQ(values[1], -1.25f);
  EXPECT_FLOAT_EQ(values[2], 1e6f + 7);
}

TEST(Dataset, DuplicateIdIsRefusedNamingBothRows) {
  const fs::path dir = fresh_dir("duplicate");
  DatasetWriter writer(dir / "d.h5", image_layout());
  writer.append("a", "", 0, false, distinctive_bytes(0, 784));
  writer.append("b", "", 0, false, distinctive_bytes(1, 784));
  try {
    writer.append("a", "", 0, false, distinctive_bytes(2, 784));
    FAIL() << "a duplicate id must be refused";
  } catch (const StorageError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'a'"), std::string::npos) << message;
    EXPECT_NE(message.find("rows 0 and 2"), std::string::npos) << message;
  }
  EXPECT_THROW(writer.append("c", "", 0, false, distinctive_bytes(3, 100)), std::invalid_argument);
}

TEST(Dataset, AbandonedWriterLeavesNoFile) {
  const fs::path dir = fresh_dir("abandoned");
  {
    DatasetWriter writer(dir / "x.h5", image_layout());
    writer.append("a", "", 0, false, distinctive_bytes(0, 784));
    EXPECT_TRUE(fs::exists(dir / "x.h5.tmp"));
  }
  EXPECT_FALSE(fs::exists(dir / "x.h5"));
  EXPECT_FALSE(fs::exists(dir / "x.h5.tmp"));
}

TEST(Dataset, UnwritableOutputPathIsAClearError) {
  const fs::path dir = fresh_dir("unwritable");
  const fs::path out = dir / "no" / "such" / "dir" / "x.h5";
  try {
    DatasetWriter writer(out, image_layout());
    FAIL() << "writing into a missing directory must fail";
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find(out.string()), std::string::npos) << e.what();
  }
}

TEST(Dataset, ForeignFilesAreRefusedByName) {
  const fs::path dir = fresh_dir("foreign");
  const fs::path plain_hdf5 = dir / "other.h5";
  { h5::File file = h5::create_file(plain_hdf5.string()); }
  const fs::path text = dir / "notes.txt";
  write_file(text, "not hdf5 at all");
  const auto message_of = [](const fs::path& p) {
    try {
      (void)Dataset::open(p);
    } catch (const StorageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(plain_hdf5).find("'" + plain_hdf5.string() + "' is an HDF5 file but not a Lethe dataset"),
            std::string::npos)
      << message_of(plain_hdf5);
  EXPECT_NE(message_of(text).find(text.string()), std::string::npos);
  EXPECT_NE(message_of(text).find("not an HDF5 file"), std::string::npos);
  EXPECT_NE(message_of(dir / "missing.h5").find("does not exist"), std::string::npos);

  // A dataset from a newer lethe is refused with advice to upgrade.
  const fs::path newer = write_sample(dir, 4);
  {
    h5::File file = h5::open_file(newer.string(), true);
    h5::write_string_attribute(file.get(), "lethe_format_version", "99");
  }
  EXPECT_NE(message_of(newer).find("upgrade lethe"), std::string::npos) << message_of(newer);
}
