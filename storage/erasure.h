// storage/erasure.h — physical erasure of records from a dataset file (by id or by subject) and
// compaction, which rewrites the file without its tombstoned rows (DESIGN.md §2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/dataset.h"

namespace lethe::storage {

struct ErasureOptions {
  // Public records pretrained the backbone: erasing their bytes does not remove them from it,
  // so they are refused unless the caller plans a full retrain of the backbone.
  bool allow_public = false;
};

struct ErasureReport {
  std::filesystem::path file;
  std::vector<std::string> erased;          // ids whose bytes were overwritten now
  std::vector<std::string> already_erased;  // ids that were tombstoned before
  uint64_t feature_bytes_overwritten = 0;
};

// Erases the records `ids` of a dataset opened writable. Validates every id first: an
// unknown id (or a public one without allow_public) throws StorageError naming it, and then
// nothing is changed. Erasing an already tombstoned id is not an error.
ErasureReport erase_records(Dataset& dataset, std::span<const std::string> ids, const ErasureOptions& options = {});
// Erases every live record of `subject`; throws StorageError when it has none.
ErasureReport erase_subject(Dataset& dataset, std::string_view subject, const ErasureOptions& options = {});

// The same on a file path (opened writable for the call; a symlink is resolved to the real file).
ErasureReport erase_records(const std::filesystem::path& file, std::span<const std::string> ids,
                            const ErasureOptions& options = {});
ErasureReport erase_subject(const std::filesystem::path& file, std::string_view subject,
                            const ErasureOptions& options = {});

struct CompactionReport {
  std::filesystem::path file;
  uint64_t rows_before = 0;
  uint64_t rows_after = 0;
  uint64_t removed = 0;  // tombstoned rows dropped
};

// Rewrites `file` without its tombstoned rows, keeping the order, seed and layout of the
// others, through "<file>.tmp" and the commit protocol: a crash leaves the old or new file.
// A symlink is resolved first: the real file is rewritten (report.file) and the link stays valid.
CompactionReport compact(const std::filesystem::path& file, size_t batch_records = 4096);

}  // namespace lethe::storage
