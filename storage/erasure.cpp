#include "storage/erasure.h"

#include <unordered_set>

#include "storage/durable_file.h"
#include "storage/error.h"
#include "storage/progress.h"

namespace lethe::storage {
namespace {

void refuse_public(const Dataset& dataset, uint64_t row, const ErasureOptions& options) {
  if (options.allow_public || !dataset.is_public(row) || dataset.is_tombstoned(row)) return;
  throw StorageError(StorageErrorKind::kRefused, "record '" + std::string(dataset.id(row)) + "' in '" + dataset.path().string() +
                     "' is public: it was used to pretrain the frozen backbone, and erasing its bytes does not "
                     "remove it from the backbone; allow public erasure (--allow-public) only together with a full "
                     "retrain of the backbone. Nothing was erased");
}

ErasureReport erase_rows(Dataset& dataset, const std::vector<uint64_t>& rows) {
  ErasureReport report;
  report.file = dataset.path();
  for (const uint64_t row : rows)
    if (dataset.is_tombstoned(row)) report.already_erased.emplace_back(dataset.id(row));
  for (const uint64_t row : dataset.erase_rows(rows)) report.erased.emplace_back(dataset.id(row));
  report.feature_bytes_overwritten = report.erased.size() * dataset.layout().bytes_per_record();
  return report;
}

}  // namespace

ErasureReport erase_records(Dataset& dataset, std::span<const std::string> ids, const ErasureOptions& options) {
  std::vector<uint64_t> rows;
  std::unordered_set<uint64_t> seen;
  for (const std::string& id : ids) {
    const auto row = dataset.find(id);
    if (!row)
      throw StorageError(StorageErrorKind::kNotFound, "cannot erase record '" + id + "': no record with this id in '" + dataset.path().string() +
                         "'. Nothing was erased; check the ids and retry");
    refuse_public(dataset, *row, options);
    if (seen.insert(*row).second) rows.push_back(*row);
  }
  return erase_rows(dataset, rows);
}

ErasureReport erase_subject(Dataset& dataset, std::string_view subject, const ErasureOptions& options) {
  if (subject.empty()) throw std::invalid_argument("erasing by subject needs a non-empty subject");
  const std::vector<uint64_t> rows = dataset.rows_of_subject(subject);
  if (rows.empty())
    throw StorageError("subject '" + std::string(subject) + "' has no live records in '" + dataset.path().string() +
                       "' (unknown subject, or its records were erased already). Nothing was erased");
  for (const uint64_t row : rows) refuse_public(dataset, row, options);
  return erase_rows(dataset, rows);
}

ErasureReport erase_records(const std::filesystem::path& file, std::span<const std::string> ids,
                            const ErasureOptions& options) {
  Dataset dataset = Dataset::open(resolve_data_file(file), /*writable=*/true);
  return erase_records(dataset, ids, options);
}

ErasureReport erase_subject(const std::filesystem::path& file, std::string_view subject, const ErasureOptions& options) {
  Dataset dataset = Dataset::open(resolve_data_file(file), /*writable=*/true);
  return erase_subject(dataset, subject, options);
}

CompactionReport compact(const std::filesystem::path& file, size_t batch_records) {
  // The real file: rewriting a symlink's path would replace the link and leave the old copy, with
  // the tombstoned rows' ids, where the link pointed.
  const std::filesystem::path real = resolve_data_file(file);
  CompactionReport report;
  report.file = real;
  std::optional<Dataset> source(Dataset::open(real, /*writable=*/false));
  report.rows_before = source->size();
  DatasetWriter writer(real, source->layout());
  RecordFilter live;  // every public flag, no tombstones
  RecordStream stream = source->stream(live, batch_records);
  RecordBatch batch;
  const uint64_t record_bytes = source->layout().bytes_per_record();
  ProgressTask progress("compact", static_cast<std::int64_t>(report.rows_before), "records");
  while (stream.next(batch)) {
    progress.advance(static_cast<std::int64_t>(batch.size()));
    for (size_t i = 0; i < batch.size(); ++i) {
      const uint64_t row = batch.rows[i];
      writer.append(source->id(row), source->subject(row), batch.labels[i], source->is_public(row),
                    {batch.features.data() + i * record_bytes, record_bytes});
    }
  }
  report.rows_after = writer.size();
  report.removed = report.rows_before - report.rows_after;
  source.reset();  // close the old file before it is replaced
  writer.commit();
  return report;
}

}  // namespace lethe::storage
