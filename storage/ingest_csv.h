// storage/ingest_csv.h — ingest of a CSV file (plain or gzip) with a header line: a label column,
// optional id and subject columns, and every other column a feature.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "storage/dataset.h"
#include "storage/ingest.h"

namespace lethe::storage {

struct CsvSource {
  std::filesystem::path file;
  std::string label_column = "label";  // integer labels
  std::string id_column;               // "" = none: ids "<prefix>-<index>" by data row (0-based)
  std::string subject_column;          // "" = none (options.subject_mapping may supply subjects)
  FeatureType feature_type = FeatureType::float32;  // uint8 requires integers in 0..255
  std::vector<uint64_t> feature_shape;  // empty = one dimension, the number of feature columns
};

// Throws StorageError naming the file, the line and (for a value) the column of a ragged row,
// a non-numeric or out-of-range value, or a duplicate id (with the line of its first use).
[[nodiscard]] IngestReport ingest_csv(const CsvSource& source, const IngestOptions& options);

}  // namespace lethe::storage
