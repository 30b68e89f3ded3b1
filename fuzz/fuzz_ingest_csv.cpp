// fuzz/fuzz_ingest_csv.cpp — any bytes as a CSV file (plain or gzip: storage/gzip_input.h reads
// both) through lethe::storage::load_subject_mapping (the id,subject mapping reader) and
// lethe::storage::ingest_csv, which writes a real HDF5 dataset into a scratch directory.
// Options follow the input: label column "label"; the id and subject columns are "id" and
// "subject" when the header names them; features are uint8 for inputs of odd length and float32
// otherwise (so both parsers are reached from the same corpus).
// Expected: success or storage::StorageError. Findings: a crash, a sanitizer report, any other
// exception, or a success whose report disagrees with the dataset file it wrote.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_support.h"
#include "storage/csv_reader.h"
#include "storage/dataset.h"
#include "storage/error.h"
#include "storage/ingest.h"
#include "storage/ingest_csv.h"

using lethe::fuzz::describe_current_exception;
using lethe::fuzz::finding;
namespace storage = lethe::storage;

namespace {

// A committed dataset holds what the ingest reported, and reads back.
void check_written(const std::filesystem::path& file, const storage::IngestReport& report) {
  const auto dataset = storage::Dataset::open(file);
  if (dataset.size() != report.records || dataset.public_count() != report.public_records)
    finding("the ingest reported " + std::to_string(report.records) + " records (" +
            std::to_string(report.public_records) + " public); the file holds " + std::to_string(dataset.size()) +
            " (" + std::to_string(dataset.public_count()) + " public)");
  std::vector<uint64_t> rows(dataset.size());
  for (uint64_t r = 0; r < rows.size(); ++r) rows[r] = r;
  std::vector<uint8_t> features(rows.size() * dataset.layout().bytes_per_record());
  dataset.read_features(rows, features);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const lethe::fuzz::ScratchDir scratch;
  scratch.clear();
  const auto csv = scratch.write("records.csv", data, size);

  try {
    (void)storage::load_subject_mapping(csv);
  } catch (const storage::StorageError&) {
  } catch (...) {
    finding("load_subject_mapping threw " + describe_current_exception());
  }

  // The header decides which optional columns exist (CsvReader is what ingest_csv reads it with).
  storage::CsvSource source;
  source.file = csv;
  source.feature_type = size % 2 == 1 ? storage::FeatureType::uint8 : storage::FeatureType::float32;
  try {
    storage::CsvReader reader(csv);
    std::vector<std::string_view> fields;
    if (reader.next(fields)) {
      const std::vector<std::string> header(fields.begin(), fields.end());
      if (storage::find_column(header, "id") >= 0) source.id_column = "id";
      if (storage::find_column(header, "subject") >= 0) source.subject_column = "subject";
    }
  } catch (const storage::StorageError&) {
  } catch (...) {
    finding("CsvReader threw " + describe_current_exception());
  }

  storage::IngestOptions options;
  options.out = scratch.path() / "records.h5";
  options.seed = 7;
  options.public_fraction = 0.25;
  options.chunk_records = 4;  // several chunks from a few rows
  try {
    const auto report = storage::ingest_csv(source, options);
    // What the ingest says it wrote must be what the file holds.
    check_written(options.out, report);
  } catch (const storage::StorageError&) {
  } catch (...) {
    finding("ingest_csv threw " + describe_current_exception());
  }
  return 0;
}
