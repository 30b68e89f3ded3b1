// storage/ingest_idx.h — ingest of IDX files (MNIST, Fashion-MNIST; gzip or plain): an images file
// of unsigned bytes N x d1 x ... and a labels file of N unsigned bytes, streamed into a dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "storage/gzip_input.h"
#include "storage/ingest.h"

namespace lethe::storage {

struct IdxSource {
  std::filesystem::path images;
  std::filesystem::path labels;
};

// The header of an IDX file: its element type code (0x08 = unsigned byte) and dimensions.
struct IdxHeader {
  uint8_t type = 0;
  std::vector<uint32_t> dims;
  [[nodiscard]] uint64_t items() const { return dims.empty() ? 0 : dims[0]; }
  [[nodiscard]] uint64_t bytes_per_item() const;
};

// Reads and checks the header of an unsigned-byte IDX file of `rank` dimensions; `role`
// ("images" or "labels") names the file in errors. Throws StorageError on a wrong magic number.
[[nodiscard]] IdxHeader read_idx_header(GzipInput& input, int rank, const char* role);

// Ids are "<prefix>-<index>" with the 0-based index in the IDX files. Subjects come from
// options.subject_mapping when given.
[[nodiscard]] IngestReport ingest_idx(const IdxSource& source, const IngestOptions& options);

}  // namespace lethe::storage
