// fuzz/fuzz_ingest_idx.cpp — any bytes as a pair of IDX files (labels and images, each plain or
// gzip) through lethe::storage::ingest_idx, which writes a real HDF5 dataset into a scratch
// directory. Input layout: 2 bytes big-endian N, then N bytes of the labels file (fewer if the
// input ends), then the rest as the images file. fuzz/corpus/fuzz_ingest_idx/ was made this way
// (fuzz/README.md has the one-liner).
// Expected: success or storage::StorageError. Findings: a crash, a sanitizer report (including an
// allocation beyond libFuzzer's -malloc_limit_mb), any other exception, or a success whose report
// disagrees with the dataset file it wrote.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_support.h"
#include "storage/dataset.h"
#include "storage/error.h"
#include "storage/ingest.h"
#include "storage/ingest_idx.h"

using lethe::fuzz::describe_current_exception;
using lethe::fuzz::finding;
namespace storage = lethe::storage;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const lethe::fuzz::ScratchDir scratch;
  if (size < 2) return 0;
  scratch.clear();
  const size_t labels_size = std::min<size_t>((size_t{data[0]} << 8) | data[1], size - 2);
  storage::IdxSource source;
  source.labels = scratch.write("train-labels-idx1-ubyte", data + 2, labels_size);
  source.images = scratch.write("train-images-idx3-ubyte", data + 2 + labels_size, size - 2 - labels_size);

  storage::IngestOptions options;
  options.out = scratch.path() / "records.h5";
  options.seed = 7;
  options.public_fraction = 0.25;
  options.chunk_records = 4;
  try {
    const auto report = storage::ingest_idx(source, options);
    const auto dataset = storage::Dataset::open(options.out);
    if (dataset.size() != report.records || dataset.public_count() != report.public_records)
      finding("ingest_idx reported " + std::to_string(report.records) + " records; the file holds " +
              std::to_string(dataset.size()));
    std::vector<uint64_t> rows(dataset.size());
    for (uint64_t r = 0; r < rows.size(); ++r) rows[r] = r;
    std::vector<uint8_t> features(rows.size() * dataset.layout().bytes_per_record());
    dataset.read_features(rows, features);
  } catch (const storage::StorageError&) {
  } catch (...) {
    finding("ingest_idx threw " + describe_current_exception());
  }
  return 0;
}
