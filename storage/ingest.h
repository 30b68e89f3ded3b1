// storage/ingest.h — what every ingest (IDX, CSV) shares: its options, its report, the id,subject
// mapping file, and the sink that assigns public flags and subjects and commits the dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "storage/dataset.h"
#include "storage/record_assignment.h"

namespace lethe::storage {

struct IngestOptions {
  std::filesystem::path out;         // written as "<out>.tmp", committed to `out` on success
  uint64_t seed = 0;                 // keys shard, slice and public assignment
  double public_fraction = 0.0;      // in [0, 1]: this fraction of ids (by keyed hash) is public
  std::optional<std::filesystem::path> subject_mapping;  // CSV with columns id,subject
  std::string id_prefix;             // for generated ids "<prefix>-<index>"; "" derives it from the input name
  uint64_t chunk_records = 0;        // records per feature chunk; 0 chooses about 256 KiB
};

struct IngestReport {
  std::filesystem::path file;
  uint64_t records = 0;
  uint64_t public_records = 0;
  uint64_t records_with_subject = 0;
  uint64_t mapping_entries = 0;    // ids in the subject mapping file
  uint64_t mapping_unmatched = 0;  // of those, ids that matched no ingested record
  FeatureType feature_type = FeatureType::uint8;
  std::vector<uint64_t> feature_shape;
  std::map<int32_t, uint64_t> label_counts;
};

// An id -> subject mapping read from a CSV file with a header naming columns `id` and
// `subject` (others ignored). Throws StorageError naming the file and line of a duplicate id
// (with its first line), a ragged row or a missing column.
struct SubjectMapping {
  std::filesystem::path file;
  std::unordered_map<std::string, std::string> subject_by_id;
};
[[nodiscard]] SubjectMapping load_subject_mapping(const std::filesystem::path& file);

// "<first word of the file name>", e.g. "train" for train-images-idx3-ubyte.gz and "data" for
// data.csv: the default prefix of generated ids.
[[nodiscard]] std::string default_id_prefix(const std::filesystem::path& input);

// Receives records from a parser, adds their public flag and mapped subject, and writes them.
class IngestSink {
 public:
  IngestSink(const IngestOptions& options, DatasetLayout layout);

  // `subject` from the input itself; the mapping file, when given, supplies it otherwise.
  void add(std::string_view id, std::string_view subject, int32_t label, std::span<const uint8_t> features);
  [[nodiscard]] std::optional<uint64_t> row_of(std::string_view id) const { return writer_.row_of(id); }
  [[nodiscard]] bool has_mapping() const { return mapping_.has_value(); }
  // Commits the dataset file and reports what it holds.
  [[nodiscard]] IngestReport commit();

 private:
  static DatasetLayout checked(const IngestOptions& options, DatasetLayout layout);

  RecordAssigner assigner_;
  double public_fraction_;
  std::optional<SubjectMapping> mapping_;
  DatasetWriter writer_;
  IngestReport report_;
  uint64_t mapping_matched_ = 0;
};

}  // namespace lethe::storage
