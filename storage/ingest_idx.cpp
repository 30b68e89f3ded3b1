#include "storage/ingest_idx.h"

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "storage/error.h"
#include "storage/progress.h"
#include "storage/record_id.h"

namespace lethe::storage {

uint64_t IdxHeader::bytes_per_item() const {
  uint64_t bytes = 1;
  for (size_t d = 1; d < dims.size(); ++d) bytes *= dims[d];
  return bytes;
}

IdxHeader read_idx_header(GzipInput& input, int rank, const char* role) {
  uint8_t magic[4];
  input.read_exact(magic, 4, std::string("the IDX ") + role + " header");
  const uint32_t expected = 0x0800u | static_cast<uint32_t>(rank);
  const uint32_t found = (uint32_t{magic[0]} << 24) | (uint32_t{magic[1]} << 16) | (uint32_t{magic[2]} << 8) | magic[3];
  if (found != expected) {
    char text[128];
    std::snprintf(text, sizeof text, "its magic number is 0x%08X, expected 0x%08X (unsigned bytes, %d dimension%s)",
                  found, expected, rank, rank == 1 ? "" : "s");
    throw StorageError("'" + input.path().string() + "' is not an IDX " + role + " file: " + text +
                       "; pass the " + role + " file (e.g. train-" + (rank == 1 ? "labels-idx1" : "images-idx3") +
                       "-ubyte.gz)");
  }
  IdxHeader header;
  header.type = magic[2];
  header.dims.resize(rank);
  for (int d = 0; d < rank; ++d) {
    uint8_t b[4];
    input.read_exact(b, 4, std::string("the IDX ") + role + " header");
    header.dims[d] = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
    if (d > 0 && header.dims[d] == 0)
      throw StorageError("'" + input.path().string() + "' declares a zero dimension in its IDX header");
  }
  return header;
}

IngestReport ingest_idx(const IdxSource& source, const IngestOptions& options) {
  GzipInput labels_input(source.labels);
  const IdxHeader labels_header = read_idx_header(labels_input, 1, "labels");
  GzipInput images_input(source.images);
  const IdxHeader images_header = read_idx_header(images_input, 3, "images");
  const uint64_t count = images_header.items();
  if (labels_header.items() != count)
    throw StorageError("'" + source.images.string() + "' holds " + std::to_string(count) + " images but '" +
                       source.labels.string() + "' holds " + std::to_string(labels_header.items()) +
                       " labels: pass the labels file that belongs to these images");

  DatasetLayout layout;
  layout.feature_type = FeatureType::uint8;
  layout.feature_shape = {images_header.dims[1], images_header.dims[2]};
  // Checked before anything is allocated: the header's sizes are the file's word, not its content.
  if (count > kMaxDatasetRecords)
    throw StorageError(StorageErrorKind::kRefused, "'" + source.images.string() + "' declares " + std::to_string(count) +
                                                       " images; a dataset holds at most " +
                                                       std::to_string(kMaxDatasetRecords) + " records: split the input");
  if (layout.values_per_record() > kMaxValuesPerRecord)
    throw StorageError(StorageErrorKind::kRefused,
                       "'" + source.images.string() + "' declares images of " + std::to_string(images_header.dims[1]) +
                           "x" + std::to_string(images_header.dims[2]) + " pixels, more than the " +
                           std::to_string(kMaxValuesPerRecord) + " values a record may have; is it an IDX images file?");
  layout.source = "idx images=" + source.images.string() + " labels=" + source.labels.string();
  IngestSink sink(options, layout);

  const std::string prefix = (options.id_prefix.empty() ? default_id_prefix(source.images) : options.id_prefix) + "-";
  const uint64_t image_bytes = images_header.bytes_per_item();
  // Labels and images are read block by block, in step: memory stays within ~64 MiB whatever
  // counts the headers declare (a file declaring 2^32 labels holds them, or fails at its end).
  constexpr uint64_t kBlockBytes = uint64_t{64} << 20;
  const uint64_t block_images = std::max<uint64_t>(1, std::min(count, kBlockBytes / image_bytes));
  std::vector<uint8_t> block(std::min(count, block_images) * image_bytes);
  std::vector<uint8_t> labels(std::min(count, block_images));
  std::string id = prefix;
  ProgressTask progress("ingest", static_cast<std::int64_t>(count), "records");
  for (uint64_t first = 0; first < count; first += block_images) {
    const uint64_t n = std::min(block_images, count - first);
    progress.advance(static_cast<std::int64_t>(n));
    const auto range = std::to_string(first) + ".." + std::to_string(first + n - 1) + " of " + std::to_string(count);
    labels_input.read_exact(labels.data(), n, "labels " + range);
    images_input.read_exact(block.data(), n * image_bytes, "images " + range);
    for (uint64_t i = 0; i < n; ++i) {
      char digits[24];
      const auto end = std::to_chars(digits, digits + sizeof digits, first + i).ptr;
      id.resize(prefix.size());
      id.append(digits, end);
      if (record_id_problem(id))
        validate_record_id(id, "the generated id (--id-prefix)",
                           "'" + source.images.string() + "' image " + std::to_string(first + i));
      sink.add(id, {}, labels[i], {block.data() + i * image_bytes, image_bytes});
    }
  }
  labels_input.expect_end(std::to_string(count) + " labels");
  images_input.expect_end(std::to_string(count) + " images");
  return sink.commit();
}

}  // namespace lethe::storage
