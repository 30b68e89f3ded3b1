// storage/dataset.h — the HDF5 dataset store of DESIGN.md §2 and docs/DATA_FORMAT.md: a writer that
// commits atomically, and a reader that keeps the index in memory and streams features from disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/record_assignment.h"

namespace lethe::storage {

// The value written to the root attribute `lethe_format` of every dataset file, and the
// newest layout version this code reads and writes.
inline constexpr std::string_view kDatasetFormat = "lethe-dataset";
inline constexpr int kDatasetFormatVersion = 1;
// The most records one dataset file may hold: a reader keeps the index (ids, subjects, labels,
// flags: about 40 bytes plus the id and subject per record) in memory. DatasetWriter refuses more.
inline constexpr uint64_t kMaxDatasetRecords = 100'000'000;
// The most feature values one record may have (64 MiB of float32): a larger shape is refused.
inline constexpr uint64_t kMaxValuesPerRecord = uint64_t{1} << 24;

enum class FeatureType { uint8, float32 };
[[nodiscard]] std::string_view to_string(FeatureType type);
// Parses "uint8" or "float32"; std::invalid_argument otherwise.
[[nodiscard]] FeatureType parse_feature_type(std::string_view text);
[[nodiscard]] size_t element_size(FeatureType type);

// What a dataset file holds besides its records; fixed when the file is written.
struct DatasetLayout {
  uint64_t seed = 0;                    // keys the record assignment (record_assignment.h)
  FeatureType feature_type = FeatureType::uint8;
  std::vector<uint64_t> feature_shape;  // one record's shape, e.g. {28, 28}
  double public_fraction = 0.0;         // as given at ingest, for inspection only
  std::string source;                   // where the records came from, for inspection only
  uint64_t chunk_records = 0;           // records per feature chunk; 0 chooses about 256 KiB
  // Names this dataset across copies and compaction; a new ingest gets a new one. Empty when the
  // writer should make one (random), and in files written before it existed.
  std::string uuid;

  [[nodiscard]] uint64_t values_per_record() const;  // UINT64_MAX when the product overflows
  [[nodiscard]] uint64_t bytes_per_record() const;
};

// Writes a new dataset file under "<path>.tmp" and, on commit(), moves it to `path` with the
// commit protocol of storage/durable_file.h. Destroyed without commit(), it removes the
// temporary file, so a failed write never leaves a file that looks valid.
class DatasetWriter {
 public:
  DatasetWriter(std::filesystem::path path, DatasetLayout layout);
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;
  ~DatasetWriter();

  // Appends one record; `features` holds bytes_per_record() bytes in native byte order.
  // Throws StorageError on an empty or duplicate id (naming both rows), and (kRefused) past
  // kMaxDatasetRecords records.
  void append(std::string_view id, std::string_view subject, int32_t label, bool is_public,
              std::span<const uint8_t> features);
  [[nodiscard]] std::optional<uint64_t> row_of(std::string_view id) const;
  [[nodiscard]] uint64_t size() const;
  [[nodiscard]] const DatasetLayout& layout() const;
  [[nodiscard]] const std::filesystem::path& path() const;

  // Writes the index, flushes and commits the file to `path`. The writer is done afterwards.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class PublicRecords { include, exclude, only };

// Which records a read visits. Shard and slice counts of 0 mean "no shard (slice) filter";
// the slice filter applies within the record's shard, as in S3T.
struct RecordFilter {
  PublicRecords public_records = PublicRecords::include;
  bool include_tombstoned = false;
  int shards = 0;
  int shard = 0;
  int slices = 0;
  int slice = 0;
};

// A batch of records in file order: rows, labels and features (rows.size() * bytes_per_record
// bytes, row-major, native byte order; reinterpret as float for FeatureType::float32).
struct RecordBatch {
  std::vector<uint64_t> rows;
  std::vector<int32_t> labels;
  std::vector<uint8_t> features;
  [[nodiscard]] size_t size() const { return rows.size(); }
};

class RecordStream;

// An open dataset file. Ids, subjects, labels and flags are loaded at open (the index);
// features stay on disk and are read chunk by chunk. Not thread-safe: open one per thread.
class Dataset {
 public:
  // Throws StorageError naming the file when it is missing, not HDF5, not a Lethe dataset,
  // of a newer format version, or damaged.
  [[nodiscard]] static Dataset open(const std::filesystem::path& path, bool writable = false);
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;
  ~Dataset();

  [[nodiscard]] const std::filesystem::path& path() const;
  [[nodiscard]] const DatasetLayout& layout() const;
  [[nodiscard]] const RecordAssigner& assigner() const;
  [[nodiscard]] const std::string& uuid() const { return layout().uuid; }

  // Lowercase hex SHA-256 of the uuid and every row's id and tombstone flag, in row order: what a
  // job records of its dataset, so that a re-ingested, restored or edited file is told apart.
  // `assume_tombstoned` rows count as tombstoned (the digest an erasure of them will give).
  [[nodiscard]] std::string content_digest(std::span<const uint64_t> assume_tombstoned = {}) const;

  // Rows in the file, tombstoned ones included; rows are numbered 0..size()-1.
  [[nodiscard]] uint64_t size() const;
  [[nodiscard]] uint64_t tombstoned_count() const;
  [[nodiscard]] uint64_t public_count() const;  // live public records

  [[nodiscard]] std::string_view id(uint64_t row) const;
  [[nodiscard]] std::string_view subject(uint64_t row) const;  // "" when none (or erased)
  [[nodiscard]] int32_t label(uint64_t row) const;
  [[nodiscard]] bool is_public(uint64_t row) const;
  [[nodiscard]] bool is_tombstoned(uint64_t row) const;

  [[nodiscard]] std::optional<uint64_t> find(std::string_view id) const;
  // Throws StorageError naming the id and the file when there is no such record.
  [[nodiscard]] uint64_t row_of(std::string_view id) const;
  // Rows of a subject's live records, ascending; empty when the subject has none.
  [[nodiscard]] std::vector<uint64_t> rows_of_subject(std::string_view subject) const;
  [[nodiscard]] uint64_t subject_count() const;  // distinct subjects of live records

  [[nodiscard]] bool matches(uint64_t row, const RecordFilter& filter) const;
  // Rows matching `filter`, ascending.
  [[nodiscard]] std::vector<uint64_t> select(const RecordFilter& filter) const;

  // Reads the features of `rows` (any order, repeats allowed) into `out`, which must hold
  // rows.size() * bytes_per_record bytes. Memory beyond `out` is bounded by one chunk.
  void read_features(std::span<const uint64_t> rows, std::span<uint8_t> out) const;
  [[nodiscard]] std::vector<int32_t> labels_of(std::span<const uint64_t> rows) const;

  // Visits the rows matching `filter` in file order, `batch_records` at a time.
  [[nodiscard]] RecordStream stream(const RecordFilter& filter, size_t batch_records) const;

  // Physical erasure (DESIGN.md §2): zeroes the rows' feature and subject bytes in place,
  // tombstones them, flushes and fsyncs. Needs a writable open. Rows already tombstoned
  // are skipped. Returns the rows newly erased.
  std::vector<uint64_t> erase_rows(std::span<const uint64_t> rows);

 private:
  struct Impl;
  explicit Dataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Batches of a Dataset's records; the Dataset must outlive it.
class RecordStream {
 public:
  // Fills `batch` with the next records; false (and an empty batch) once all were visited.
  bool next(RecordBatch& batch);
  [[nodiscard]] uint64_t total() const { return rows_.size(); }

 private:
  friend class Dataset;
  RecordStream(const Dataset& dataset, std::vector<uint64_t> rows, size_t batch_records);
  const Dataset* dataset_;
  std::vector<uint64_t> rows_;
  size_t batch_records_;
  size_t position_ = 0;
};

// The job directories trained on a dataset file: its root attribute "lethe_jobs", a JSON array of
// absolute paths that `lethe train` adds to when it creates a job. `lethe erase` and `lethe compact`
// refuse the dataset of a job that still exists: changed outside the job, the file would no longer
// match what the job's models hold. Empty for a file no job has claimed.
[[nodiscard]] std::vector<std::filesystem::path> dataset_jobs(const std::filesystem::path& file);
// Adds `job_dir` (made absolute) to the file's "lethe_jobs", in place; nothing when already there.
void add_dataset_job(const std::filesystem::path& file, const std::filesystem::path& job_dir);

}  // namespace lethe::storage
