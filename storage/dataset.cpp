#include "storage/dataset.h"

#include <nlohmann/json.hpp>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "storage/durable_file.h"
#include "storage/error.h"
#include "storage/hashing.h"
#include "storage/hdf5.h"
#include "storage/row_index.h"

namespace lethe::storage {
namespace fs = std::filesystem;

namespace {

// Names of the objects in a dataset file; docs/DATA_FORMAT.md describes each.
constexpr const char* kFeatures = "features";
constexpr const char* kLabels = "labels";
constexpr const char* kPublic = "public";
constexpr const char* kTombstoned = "tombstoned";
constexpr const char* kIdChars = "id_chars";
constexpr const char* kIdOffsets = "id_offsets";
constexpr const char* kSubjectChars = "subject_chars";
constexpr const char* kSubjectOffsets = "subject_offsets";
constexpr const char* kSubjectLengths = "subject_lengths";

// A feature chunk: an erasure reads, checks and rewrites every chunk it touches, so chunks are kept
// small (erasing 15 random Fashion-MNIST records took 2.9 ms with 200 KB chunks, 6.7 ms with 1 MiB),
// and large enough that a pass over all records reads as fast as with 1 MiB chunks (docs/BENCHMARKS.md).
constexpr uint64_t kTargetChunkBytes = 256 << 10;
constexpr uint64_t kIndexChunkElements = 1 << 16;  // 1-D index arrays

hid_t memory_type(FeatureType type) { return type == FeatureType::uint8 ? H5T_NATIVE_UINT8 : H5T_NATIVE_FLOAT; }
hid_t file_type(FeatureType type) { return type == FeatureType::uint8 ? H5T_STD_U8LE : H5T_IEEE_F32LE; }

uint64_t default_chunk_records(uint64_t bytes_per_record) {
  return std::max<uint64_t>(1, kTargetChunkBytes / std::max<uint64_t>(1, bytes_per_record));
}

// A dataset creation property list: chunked with Fletcher32 and no compression, so that an
// in-place overwrite rewrites a chunk at its address (erasure depends on it).
h5::PropList checksummed_chunks(const std::vector<hsize_t>& chunk, const std::string& what) {
  h5::PropList dcpl(h5::check(H5Pcreate(H5P_DATASET_CREATE), what));
  h5::check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
  h5::check(H5Pset_fletcher32(dcpl.get()), what);
  return dcpl;
}

template <typename T>
void write_1d(hid_t file, const char* name, hid_t stored_type, hid_t memory, std::span<const T> values,
              const std::string& where) {
  const std::string what = "writing '" + std::string(name) + "' in '" + where + "'";
  const hsize_t size = values.size();
  const hsize_t unlimited = H5S_UNLIMITED;
  h5::Dataspace space(h5::check(H5Screate_simple(1, &size, &unlimited), what));
  const std::vector<hsize_t> chunk{std::clamp<hsize_t>(size, 1, kIndexChunkElements)};
  h5::PropList dcpl = checksummed_chunks(chunk, what);
  h5::Dataset dataset(h5::check(
      H5Dcreate2(file, name, stored_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), what));
  if (size > 0) h5::check(H5Dwrite(dataset.get(), memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), what);
}

// RFC 4122 version 4.
std::string random_uuid() {
  std::array<unsigned char, 16> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1)
    throw StorageError("cannot draw a dataset uuid: OpenSSL's random generator failed");
  bytes[6] = static_cast<unsigned char>((bytes[6] & 0x0f) | 0x40);
  bytes[8] = static_cast<unsigned char>((bytes[8] & 0x3f) | 0x80);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 0xf];
  }
  return out;
}

std::string damaged(const fs::path& path, const std::string& what) {
  return "'" + path.string() + "' is a damaged Lethe dataset: " + what +
         "; restore it from a backup or ingest the source again";
}

template <typename T>
std::vector<T> read_1d(hid_t file, const char* name, hid_t memory, uint64_t expected, const fs::path& path) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("'") + name + "' is missing"));
  const std::string what = "reading '" + std::string(name) + "' in '" + path.string() + "'";
  h5::Dataset dataset(h5::check(H5Dopen2(file, name, H5P_DEFAULT), what));
  h5::Dataspace space(h5::check(H5Dget_space(dataset.get()), what));
  hsize_t size = 0;
  if (H5Sget_simple_extent_ndims(space.get()) != 1) throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("'") + name + "' is not 1-D"));
  h5::check(H5Sget_simple_extent_dims(space.get(), &size, nullptr), what);
  if (expected != UINT64_MAX && size != expected)
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("'") + name + "' has " + std::to_string(size) + " entries, expected " +
                                         std::to_string(expected)));
  std::vector<T> values(size);
  if (size > 0) h5::check(H5Dread(dataset.get(), memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), what);
  return values;
}

// Writes `value` at every index of `indices` in the 1-D dataset `name`, with one write: each chunk
// is read, checked and rewritten once however many of its elements change.
template <typename T>
void write_elements(hid_t file, const char* name, hid_t memory, std::span<const hsize_t> indices, const T& value,
                    const fs::path& path) {
  if (indices.empty()) return;
  const std::string what = "erasing in '" + std::string(name) + "' of '" + path.string() + "'";
  h5::Dataset dataset(h5::check(H5Dopen2(file, name, H5P_DEFAULT), what));
  h5::Dataspace space(h5::check(H5Dget_space(dataset.get()), what));
  h5::check(H5Sselect_elements(space.get(), H5S_SELECT_SET, indices.size(), indices.data()), what);
  const hsize_t count = indices.size();
  h5::Dataspace memory_space(h5::check(H5Screate_simple(1, &count, nullptr), what));
  const std::vector<T> values(indices.size(), value);
  h5::check(H5Dwrite(dataset.get(), memory, memory_space.get(), space.get(), H5P_DEFAULT, values.data()), what);
}

uint64_t parse_u64(const std::string& text, const char* name, const fs::path& path) {
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("attribute '") + name + "' is not a number: '" + text + "'"));
  return value;
}

}  // namespace

std::string_view to_string(FeatureType type) { return type == FeatureType::uint8 ? "uint8" : "float32"; }

FeatureType parse_feature_type(std::string_view text) {
  if (text == "uint8") return FeatureType::uint8;
  if (text == "float32") return FeatureType::float32;
  throw std::invalid_argument("unknown feature type '" + std::string(text) + "': use uint8 or float32");
}

size_t element_size(FeatureType type) { return type == FeatureType::uint8 ? 1 : 4; }

uint64_t DatasetLayout::values_per_record() const {
  uint64_t values = 1;
  for (const uint64_t size : feature_shape) {
    if (size != 0 && values > UINT64_MAX / size) return UINT64_MAX;
    values *= size;
  }
  return values;
}

uint64_t DatasetLayout::bytes_per_record() const { return values_per_record() * element_size(feature_type); }

// ---------------------------------------------------------------------------------------------
// Writer

struct DatasetWriter::Impl {
  fs::path path;
  fs::path temporary;
  DatasetLayout layout;
  uint64_t record_bytes = 0;
  h5::File file;
  h5::Dataset features;
  std::vector<uint8_t> pending;  // features of records not yet written, up to one chunk
  uint64_t pending_records = 0;
  uint64_t written_records = 0;
  std::string id_chars;
  std::vector<uint64_t> id_offsets{0};
  std::string subject_chars;
  std::vector<uint64_t> subject_offsets;
  std::vector<uint32_t> subject_lengths;
  std::vector<int32_t> labels;
  std::vector<uint8_t> public_flags;
  RowIndex rows_by_id;  // duplicate detection in 4-8 bytes per record, reading ids from id_chars
  bool done = false;

  [[nodiscard]] std::string_view id_of(uint64_t row) const {
    return {id_chars.data() + id_offsets[row], id_offsets[row + 1] - id_offsets[row]};
  }

  [[nodiscard]] std::string where() const { return "'" + temporary.string() + "' (being written for '" + path.string() + "')"; }

  void write_pending() {
    if (pending_records == 0) return;
    const std::string what = "writing features to " + where();
    const size_t rank = layout.feature_shape.size() + 1;
    std::vector<hsize_t> extent(rank), start(rank, 0), count(rank);
    extent[0] = written_records + pending_records;
    start[0] = written_records;
    count[0] = pending_records;
    for (size_t d = 1; d < rank; ++d) extent[d] = count[d] = layout.feature_shape[d - 1];
    h5::check(H5Dset_extent(features.get(), extent.data()), what);
    h5::Dataspace file_space(h5::check(H5Dget_space(features.get()), what));
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), what);
    h5::Dataspace memory_space(h5::check(H5Screate_simple(static_cast<int>(rank), count.data(), nullptr), what));
    h5::check(H5Dwrite(features.get(), memory_type(layout.feature_type), memory_space.get(), file_space.get(),
                       H5P_DEFAULT, pending.data()),
              what);
    written_records += pending_records;
    pending_records = 0;
  }
};

DatasetWriter::DatasetWriter(fs::path path, DatasetLayout layout) : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = std::move(path);
  w.temporary = temp_path_for(w.path);
  w.layout = std::move(layout);
  if (w.layout.feature_shape.empty() || w.layout.values_per_record() == 0)
    throw std::invalid_argument("a dataset needs a non-empty feature shape with no zero dimension (writing '" +
                                w.path.string() + "')");
  if (w.layout.values_per_record() > kMaxValuesPerRecord)
    throw std::invalid_argument("a record of shape " + nlohmann::json(w.layout.feature_shape).dump() + " has more than " +
                                std::to_string(kMaxValuesPerRecord) + " feature values, the most a record may have (writing '" +
                                w.path.string() + "')");
  w.record_bytes = w.layout.bytes_per_record();
  if (w.layout.uuid.empty()) w.layout.uuid = random_uuid();
  if (w.layout.chunk_records == 0) w.layout.chunk_records = default_chunk_records(w.record_bytes);
  w.pending.resize(w.layout.chunk_records * w.record_bytes);

  try {
    w.file = h5::create_file(w.temporary.string());
  } catch (const StorageError& e) {
    throw StorageError("cannot write dataset '" + w.path.string() + "': " + e.what());
  }
  const std::string what = "creating 'features' in " + w.where();
  const size_t rank = w.layout.feature_shape.size() + 1;
  std::vector<hsize_t> dims(rank, 0), max_dims(rank), chunk(rank);
  max_dims[0] = H5S_UNLIMITED;
  chunk[0] = w.layout.chunk_records;
  for (size_t d = 1; d < rank; ++d) dims[d] = max_dims[d] = chunk[d] = w.layout.feature_shape[d - 1];
  h5::Dataspace space(h5::check(H5Screate_simple(static_cast<int>(rank), dims.data(), max_dims.data()), what));
  h5::PropList dcpl = checksummed_chunks(chunk, what);
  // Chunks are written whole, once: no chunk cache needed while writing.
  h5::PropList dapl(h5::check(H5Pcreate(H5P_DATASET_ACCESS), what));
  h5::check(H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0), what);
  w.features = h5::Dataset(h5::check(H5Dcreate2(w.file.get(), kFeatures, file_type(w.layout.feature_type), space.get(),
                                                H5P_DEFAULT, dcpl.get(), dapl.get()),
                                     what));
}

DatasetWriter::~DatasetWriter() {
  if (!impl_ || impl_->done) return;
  impl_->features.reset();
  impl_->file.reset();
  std::error_code ignored;
  fs::remove(impl_->temporary, ignored);
}

void DatasetWriter::append(std::string_view id, std::string_view subject, int32_t label, bool is_public,
                           std::span<const uint8_t> features) {
  Impl& w = *impl_;
  if (w.done) throw std::logic_error("DatasetWriter::append after commit of '" + w.path.string() + "'");
  if (features.size() != w.record_bytes)
    throw std::invalid_argument("record '" + std::string(id) + "' has " + std::to_string(features.size()) +
                                " feature bytes, the dataset '" + w.path.string() + "' expects " +
                                std::to_string(w.record_bytes));
  const uint64_t row = w.labels.size();
  if (id.empty()) throw StorageError("record at row " + std::to_string(row) + " of " + w.where() + " has an empty id");
  if (row >= kMaxDatasetRecords)
    throw StorageError(StorageErrorKind::kRefused,
                       w.where() + " would hold more than " + std::to_string(kMaxDatasetRecords) +
                           " records, the most one dataset file may hold (its index is kept in memory): split the "
                           "input into several datasets. Nothing was written");
  const auto id_of = [&w](uint64_t r) { return w.id_of(r); };
  if (const auto first = w.rows_by_id.find(id, id_of))
    throw StorageError("duplicate record id '" + std::string(id) + "' at rows " + std::to_string(*first) + " and " +
                       std::to_string(row) + " of " + w.where() + ": ids must be unique");
  w.id_chars.append(id);
  w.id_offsets.push_back(w.id_chars.size());
  (void)w.rows_by_id.insert(id, row, id_of);  // not there: checked above
  w.subject_offsets.push_back(w.subject_chars.size());
  w.subject_lengths.push_back(static_cast<uint32_t>(subject.size()));
  w.subject_chars.append(subject);
  w.labels.push_back(label);
  w.public_flags.push_back(is_public ? 1 : 0);
  std::memcpy(w.pending.data() + w.pending_records * w.record_bytes, features.data(), w.record_bytes);
  if (++w.pending_records == w.layout.chunk_records) w.write_pending();
}

std::optional<uint64_t> DatasetWriter::row_of(std::string_view id) const {
  const Impl& w = *impl_;
  return w.rows_by_id.find(id, [&w](uint64_t r) { return w.id_of(r); });
}

uint64_t DatasetWriter::size() const { return impl_->labels.size(); }
const DatasetLayout& DatasetWriter::layout() const { return impl_->layout; }
const fs::path& DatasetWriter::path() const { return impl_->path; }

void DatasetWriter::commit() {
  Impl& w = *impl_;
  if (w.done) throw std::logic_error("DatasetWriter::commit called twice for '" + w.path.string() + "'");
  w.write_pending();
  const hid_t file = w.file.get();
  const std::string where = w.where();
  write_1d<int32_t>(file, kLabels, H5T_STD_I32LE, H5T_NATIVE_INT32, w.labels, where);
  write_1d<uint8_t>(file, kPublic, H5T_STD_U8LE, H5T_NATIVE_UINT8, w.public_flags, where);
  write_1d<uint8_t>(file, kTombstoned, H5T_STD_U8LE, H5T_NATIVE_UINT8, std::vector<uint8_t>(w.labels.size(), 0), where);
  write_1d<char>(file, kIdChars, H5T_STD_U8LE, H5T_NATIVE_UINT8, w.id_chars, where);  // no copy of the ids
  write_1d<uint64_t>(file, kIdOffsets, H5T_STD_U64LE, H5T_NATIVE_UINT64, w.id_offsets, where);
  write_1d<char>(file, kSubjectChars, H5T_STD_U8LE, H5T_NATIVE_UINT8, w.subject_chars, where);
  write_1d<uint64_t>(file, kSubjectOffsets, H5T_STD_U64LE, H5T_NATIVE_UINT64, w.subject_offsets, where);
  write_1d<uint32_t>(file, kSubjectLengths, H5T_STD_U32LE, H5T_NATIVE_UINT32, w.subject_lengths, where);

  h5::Group root(h5::check(H5Gopen2(file, "/", H5P_DEFAULT), "opening the root group of " + where));
  h5::write_string_attribute(root.get(), "lethe_format", std::string(kDatasetFormat));
  h5::write_string_attribute(root.get(), "lethe_format_version", std::to_string(kDatasetFormatVersion));
  h5::write_string_attribute(root.get(), "seed", std::to_string(w.layout.seed));
  h5::write_string_attribute(root.get(), "feature_type", std::string(to_string(w.layout.feature_type)));
  h5::write_string_attribute(root.get(), "feature_shape", nlohmann::json(w.layout.feature_shape).dump());
  h5::write_string_attribute(root.get(), "public_fraction", nlohmann::json(w.layout.public_fraction).dump());
  h5::write_string_attribute(root.get(), "source", w.layout.source);
  h5::write_string_attribute(root.get(), "uuid", w.layout.uuid);
  root.reset();

  h5::check(H5Fflush(file, H5F_SCOPE_GLOBAL), "flushing " + where);
  w.features.reset();
  w.file.reset();
  commit_file(w.temporary, w.path);
  w.done = true;
}

// ---------------------------------------------------------------------------------------------
// Reader

struct Dataset::Impl {
  fs::path path;
  bool writable = false;
  DatasetLayout layout;
  std::optional<RecordAssigner> assigner;
  uint64_t record_bytes = 0;
  uint64_t rows = 0;
  h5::File file;
  h5::Dataset features;
  std::string id_chars;
  std::vector<uint64_t> id_offsets;
  std::vector<uint64_t> subject_offsets;
  std::vector<uint32_t> subject_lengths;  // 0 once erased
  std::string subject_chars;
  std::vector<int32_t> labels;
  std::vector<uint8_t> public_flags;
  std::vector<uint8_t> tombstoned;
  uint64_t tombstoned_count = 0;
  uint64_t public_live_count = 0;
  RowIndex row_by_id;  // reads ids from id_chars
  std::unordered_map<std::string, std::vector<uint64_t>> live_rows_by_subject;
  mutable std::vector<uint8_t> scratch;  // at most one chunk of features

  [[nodiscard]] std::string_view id_of(uint64_t row) const {
    return {id_chars.data() + id_offsets[row], id_offsets[row + 1] - id_offsets[row]};
  }
  [[nodiscard]] std::string_view subject_of(uint64_t row) const {
    return {subject_chars.data() + subject_offsets[row], subject_lengths[row]};
  }

  void check_row(uint64_t row) const {
    if (row >= rows)
      throw std::out_of_range("row " + std::to_string(row) + " is out of range: '" + path.string() + "' has " +
                              std::to_string(rows) + " rows");
  }

  // Reads `count` consecutive rows starting at `first` into `out`.
  void read_rows(uint64_t first, uint64_t count, uint8_t* out) const {
    if (count == 0) return;
    const std::string what = "reading features of rows " + std::to_string(first) + ".." +
                             std::to_string(first + count - 1) + " of '" + path.string() + "'";
    const size_t rank = layout.feature_shape.size() + 1;
    std::vector<hsize_t> start(rank, 0), extent(rank);
    start[0] = first;
    extent[0] = count;
    for (size_t d = 1; d < rank; ++d) extent[d] = layout.feature_shape[d - 1];
    h5::Dataspace file_space(h5::check(H5Dget_space(features.get()), what));
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr), what);
    h5::Dataspace memory_space(h5::check(H5Screate_simple(static_cast<int>(rank), extent.data(), nullptr), what));
    h5::check(H5Dread(features.get(), memory_type(layout.feature_type), memory_space.get(), file_space.get(), H5P_DEFAULT,
                      out),
              what);
  }
};

Dataset::Dataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

Dataset Dataset::open(const fs::path& path, bool writable) {
  auto d = std::make_unique<Impl>();
  d->path = path;
  d->writable = writable;
  d->file = h5::open_file(path.string(), writable);
  const hid_t file = d->file.get();
  const std::string name = "'" + path.string() + "'";

  h5::Group root(h5::check(H5Gopen2(file, "/", H5P_DEFAULT), "opening the root group of " + name));
  if (!h5::has_attribute(root.get(), "lethe_format"))
    throw StorageError(name + " is an HDF5 file but not a Lethe dataset (it has no 'lethe_format' attribute): "
                       "create datasets with `lethe ingest`");
  const std::string format = h5::read_string_attribute(root.get(), "lethe_format");
  if (format != kDatasetFormat)
    throw StorageError(name + " is a Lethe file of kind '" + format + "', not a dataset ('" +
                       std::string(kDatasetFormat) + "'): pass a file written by `lethe ingest`");
  const auto attribute = [&](const char* key) {
    if (!h5::has_attribute(root.get(), key)) throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("attribute '") + key + "' is missing"));
    return h5::read_string_attribute(root.get(), key);
  };
  const uint64_t version = parse_u64(attribute("lethe_format_version"), "lethe_format_version", path);
  if (version > static_cast<uint64_t>(kDatasetFormatVersion))
    throw StorageError(name + " has dataset format version " + std::to_string(version) + " but this lethe reads up to " +
                       std::to_string(kDatasetFormatVersion) + ": upgrade lethe");
  d->layout.seed = parse_u64(attribute("seed"), "seed", path);
  try {
    d->layout.feature_type = parse_feature_type(attribute("feature_type"));
    d->layout.feature_shape = nlohmann::json::parse(attribute("feature_shape")).get<std::vector<uint64_t>>();
    d->layout.public_fraction = nlohmann::json::parse(attribute("public_fraction")).get<double>();
  } catch (const StorageError&) {
    throw;
  } catch (const std::exception& e) {
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, std::string("a layout attribute is invalid (") + e.what() + ")"));
  }
  d->layout.source = attribute("source");
  if (h5::has_attribute(root.get(), "uuid")) d->layout.uuid = h5::read_string_attribute(root.get(), "uuid");
  root.reset();
  if (d->layout.feature_shape.empty() || d->layout.values_per_record() == 0 ||
      d->layout.values_per_record() > kMaxValuesPerRecord)
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, "attribute 'feature_shape' is empty, has a zero dimension or "
                                                                 "more than " + std::to_string(kMaxValuesPerRecord) + " values"));
  d->record_bytes = d->layout.bytes_per_record();
  d->assigner.emplace(d->layout.seed);

  if (H5Lexists(file, kFeatures, H5P_DEFAULT) <= 0) throw StorageError(StorageErrorKind::kDamaged, damaged(path, "'features' is missing"));
  const std::string what = "opening 'features' in " + name;
  {
    // Room for a few chunks: reads of scattered rows in one chunk decode it once.
    const uint64_t chunk_guess = default_chunk_records(d->record_bytes) * d->record_bytes;
    h5::PropList dapl(h5::check(H5Pcreate(H5P_DATASET_ACCESS), what));
    h5::check(H5Pset_chunk_cache(dapl.get(), 521, std::max<uint64_t>(4 * chunk_guess, 4 << 20), 1.0), what);
    d->features = h5::Dataset(h5::check(H5Dopen2(file, kFeatures, dapl.get()), what));
  }
  h5::Dataspace space(h5::check(H5Dget_space(d->features.get()), what));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != static_cast<int>(d->layout.feature_shape.size()) + 1)
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, "'features' has rank " + std::to_string(rank) + ", expected " +
                                         std::to_string(d->layout.feature_shape.size() + 1)));
  std::vector<hsize_t> dims(rank);
  h5::check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), what);
  for (int k = 1; k < rank; ++k)
    if (dims[k] != d->layout.feature_shape[k - 1])
      throw StorageError(StorageErrorKind::kDamaged, damaged(path, "'features' does not have the shape given by attribute 'feature_shape'"));
  d->rows = dims[0];
  {
    h5::PropList dcpl(h5::check(H5Dget_create_plist(d->features.get()), what));
    std::vector<hsize_t> chunk(rank);
    if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED) throw StorageError(StorageErrorKind::kDamaged, damaged(path, "'features' is not chunked"));
    h5::check(H5Pget_chunk(dcpl.get(), rank, chunk.data()), what);
    d->layout.chunk_records = chunk[0];
  }

  d->labels = read_1d<int32_t>(file, kLabels, H5T_NATIVE_INT32, d->rows, path);
  d->public_flags = read_1d<uint8_t>(file, kPublic, H5T_NATIVE_UINT8, d->rows, path);
  d->tombstoned = read_1d<uint8_t>(file, kTombstoned, H5T_NATIVE_UINT8, d->rows, path);
  const auto id_chars = read_1d<uint8_t>(file, kIdChars, H5T_NATIVE_UINT8, UINT64_MAX, path);
  d->id_chars.assign(id_chars.begin(), id_chars.end());
  d->id_offsets = read_1d<uint64_t>(file, kIdOffsets, H5T_NATIVE_UINT64, d->rows + 1, path);
  const auto subject_chars = read_1d<uint8_t>(file, kSubjectChars, H5T_NATIVE_UINT8, UINT64_MAX, path);
  d->subject_chars.assign(subject_chars.begin(), subject_chars.end());
  d->subject_offsets = read_1d<uint64_t>(file, kSubjectOffsets, H5T_NATIVE_UINT64, d->rows, path);
  d->subject_lengths = read_1d<uint32_t>(file, kSubjectLengths, H5T_NATIVE_UINT32, d->rows, path);

  if (d->id_offsets.front() != 0 || d->id_offsets.back() != d->id_chars.size() ||
      !std::is_sorted(d->id_offsets.begin(), d->id_offsets.end()))
    throw StorageError(StorageErrorKind::kDamaged, damaged(path, "'id_offsets' does not index 'id_chars'"));
  if (d->rows > RowIndex::kMaxRows)
    throw StorageError(StorageErrorKind::kRefused, name + " holds " + std::to_string(d->rows) + " records, more than " +
                                                       std::to_string(RowIndex::kMaxRows) + " this lethe can index");
  const Impl& index = *d;
  const auto id_of = [&index](uint64_t r) { return index.id_of(r); };
  for (uint64_t row = 0; row < d->rows; ++row) {
    const std::string_view id = d->id_of(row);
    if (const auto first = d->row_by_id.insert(id, row, id_of))
      throw StorageError(StorageErrorKind::kDamaged, damaged(path, "id '" + std::string(id) + "' appears at rows " + std::to_string(*first) +
                                           " and " + std::to_string(row)));
    if (d->subject_offsets[row] + d->subject_lengths[row] > d->subject_chars.size())
      throw StorageError(StorageErrorKind::kDamaged, damaged(path, "the subject of row " + std::to_string(row) + " lies outside 'subject_chars'"));
    if (d->tombstoned[row]) {
      ++d->tombstoned_count;
    } else {
      if (d->public_flags[row]) ++d->public_live_count;
      if (d->subject_lengths[row] > 0) d->live_rows_by_subject[std::string(d->subject_of(row))].push_back(row);
    }
  }
  return Dataset(std::move(d));
}

const fs::path& Dataset::path() const { return impl_->path; }
const DatasetLayout& Dataset::layout() const { return impl_->layout; }
const RecordAssigner& Dataset::assigner() const { return *impl_->assigner; }
uint64_t Dataset::size() const { return impl_->rows; }
uint64_t Dataset::tombstoned_count() const { return impl_->tombstoned_count; }
uint64_t Dataset::public_count() const { return impl_->public_live_count; }

std::string_view Dataset::id(uint64_t row) const {
  impl_->check_row(row);
  return impl_->id_of(row);
}
std::string_view Dataset::subject(uint64_t row) const {
  impl_->check_row(row);
  return impl_->subject_of(row);
}
int32_t Dataset::label(uint64_t row) const {
  impl_->check_row(row);
  return impl_->labels[row];
}
bool Dataset::is_public(uint64_t row) const {
  impl_->check_row(row);
  return impl_->public_flags[row] != 0;
}
bool Dataset::is_tombstoned(uint64_t row) const {
  impl_->check_row(row);
  return impl_->tombstoned[row] != 0;
}

std::optional<uint64_t> Dataset::find(std::string_view id) const {
  const Impl& d = *impl_;
  return d.row_by_id.find(id, [&d](uint64_t r) { return d.id_of(r); });
}

std::string Dataset::content_digest(std::span<const uint64_t> assume_tombstoned) const {
  std::unordered_set<uint64_t> extra(assume_tombstoned.begin(), assume_tombstoned.end());
  Sha256 sha;
  sha.update_text("lethe-dataset-content-v1");
  sha.update_text(impl_->layout.uuid);
  sha.update_u64(impl_->rows);
  for (uint64_t row = 0; row < impl_->rows; ++row) {
    sha.update_text(id(row));
    const char tombstoned = impl_->tombstoned[row] != 0 || extra.count(row) != 0 ? 1 : 0;
    sha.update(&tombstoned, 1);
  }
  return sha.hex();
}

uint64_t Dataset::row_of(std::string_view id) const {
  if (const auto row = find(id)) return *row;
  throw StorageError(StorageErrorKind::kNotFound, "no record with id '" + std::string(id) + "' in '" + impl_->path.string() +
                     "': check the id (`lethe inspect` shows the dataset)");
}

std::vector<uint64_t> Dataset::rows_of_subject(std::string_view subject) const {
  const auto it = impl_->live_rows_by_subject.find(std::string(subject));
  if (it == impl_->live_rows_by_subject.end()) return {};
  return it->second;
}

uint64_t Dataset::subject_count() const { return impl_->live_rows_by_subject.size(); }

bool Dataset::matches(uint64_t row, const RecordFilter& filter) const {
  const Impl& d = *impl_;
  if (d.tombstoned[row] && !filter.include_tombstoned) return false;
  const bool is_public_row = d.public_flags[row] != 0;
  if (filter.public_records == PublicRecords::exclude && is_public_row) return false;
  if (filter.public_records == PublicRecords::only && !is_public_row) return false;
  if (filter.shards > 0 && d.assigner->shard_of(id(row), filter.shards) != filter.shard) return false;
  if (filter.slices > 0 && d.assigner->slice_of(id(row), filter.slices) != filter.slice) return false;
  return true;
}

std::vector<uint64_t> Dataset::select(const RecordFilter& filter) const {
  if (filter.shards < 0 || (filter.shards > 0 && (filter.shard < 0 || filter.shard >= filter.shards)))
    throw std::invalid_argument("shard " + std::to_string(filter.shard) + " of " + std::to_string(filter.shards) +
                                " does not exist: shards are numbered 0..shards-1");
  if (filter.slices < 0 || (filter.slices > 0 && (filter.slice < 0 || filter.slice >= filter.slices)))
    throw std::invalid_argument("slice " + std::to_string(filter.slice) + " of " + std::to_string(filter.slices) +
                                " does not exist: slices are numbered 0..slices-1");
  std::vector<uint64_t> rows;
  for (uint64_t row = 0; row < impl_->rows; ++row)
    if (matches(row, filter)) rows.push_back(row);
  return rows;
}

void Dataset::read_features(std::span<const uint64_t> rows, std::span<uint8_t> out) const {
  const Impl& d = *impl_;
  if (out.size() != rows.size() * d.record_bytes)
    throw std::invalid_argument("read_features of '" + d.path.string() + "': the output holds " +
                                std::to_string(out.size()) + " bytes, " + std::to_string(rows.size()) +
                                " records need " + std::to_string(rows.size() * d.record_bytes));
  if (rows.empty()) return;
  for (const uint64_t row : rows) d.check_row(row);
  bool consecutive = true;
  for (size_t i = 1; i < rows.size() && consecutive; ++i) consecutive = rows[i] == rows[0] + i;
  if (consecutive) {
    d.read_rows(rows[0], rows.size(), out.data());
    return;
  }
  // Visit the rows in file order, one chunk at a time: read the span of the chunk that the
  // wanted rows cover, then copy each row to its place in `out`.
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a] < rows[b]; });
  const uint64_t chunk = d.layout.chunk_records;
  for (size_t i = 0; i < order.size();) {
    const uint64_t block = rows[order[i]] / chunk;
    size_t j = i;
    while (j < order.size() && rows[order[j]] / chunk == block) ++j;
    const uint64_t first = rows[order[i]];
    const uint64_t count = rows[order[j - 1]] - first + 1;
    d.scratch.resize(count * d.record_bytes);
    d.read_rows(first, count, d.scratch.data());
    for (size_t k = i; k < j; ++k)
      std::memcpy(out.data() + order[k] * d.record_bytes, d.scratch.data() + (rows[order[k]] - first) * d.record_bytes,
                  d.record_bytes);
    i = j;
  }
}

std::vector<int32_t> Dataset::labels_of(std::span<const uint64_t> rows) const {
  std::vector<int32_t> labels;
  labels.reserve(rows.size());
  for (const uint64_t row : rows) labels.push_back(label(row));
  return labels;
}

RecordStream Dataset::stream(const RecordFilter& filter, size_t batch_records) const {
  if (batch_records == 0) throw std::invalid_argument("a record stream needs a batch size of at least 1");
  return RecordStream(*this, select(filter), batch_records);
}

std::vector<uint64_t> Dataset::erase_rows(std::span<const uint64_t> rows) {
  Impl& d = *impl_;
  if (!d.writable)
    throw std::logic_error("erasing records of '" + d.path.string() + "' needs Dataset::open(path, writable=true)");
  for (const uint64_t row : rows) d.check_row(row);
  // The live rows, each once, in the caller's order (what is returned) and in file order (how they
  // are written: rows sharing a feature chunk follow one another, so the chunk cache reads, checks
  // and rewrites each chunk once; the index columns are written with one selection each).
  std::vector<uint64_t> erased;
  {
    std::unordered_set<uint64_t> seen;
    for (const uint64_t row : rows)
      if (!d.tombstoned[row] && seen.insert(row).second) erased.push_back(row);
  }
  if (erased.empty()) return erased;
  std::vector<uint64_t> in_file_order = erased;
  std::sort(in_file_order.begin(), in_file_order.end());

  const hid_t file = d.file.get();
  const std::vector<uint8_t> zero_features(d.record_bytes, 0);
  const size_t rank = d.layout.feature_shape.size() + 1;
  std::vector<hsize_t> start(rank, 0), extent(rank);
  extent[0] = 1;
  for (size_t k = 1; k < rank; ++k) extent[k] = d.layout.feature_shape[k - 1];
  h5::Dataspace memory_space(h5::check(H5Screate_simple(static_cast<int>(rank), extent.data(), nullptr),
                                       "erasing records of '" + d.path.string() + "'"));
  h5::Dataspace file_space(h5::check(H5Dget_space(d.features.get()), "erasing records of '" + d.path.string() + "'"));
  std::vector<hsize_t> with_subject;
  for (const uint64_t row : in_file_order) {
    const std::string what = "overwriting the features of record '" + std::string(id(row)) + "' (row " +
                             std::to_string(row) + ") of '" + d.path.string() + "'";
    start[0] = row;
    h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr), what);
    h5::check(H5Dwrite(d.features.get(), memory_type(d.layout.feature_type), memory_space.get(), file_space.get(),
                       H5P_DEFAULT, zero_features.data()),
              what);
    if (d.subject_lengths[row] > 0) with_subject.push_back(row);
  }
  if (!with_subject.empty()) {
    // The subjects' bytes: a union of the rows' character ranges, zeroed with one write.
    const std::string what = "overwriting the subjects of " + std::to_string(with_subject.size()) +
                             " record(s) of '" + d.path.string() + "'";
    h5::Dataset chars(h5::check(H5Dopen2(file, kSubjectChars, H5P_DEFAULT), what));
    h5::Dataspace space(h5::check(H5Dget_space(chars.get()), what));
    hsize_t total = 0;
    for (const hsize_t row : with_subject) {
      const hsize_t first = d.subject_offsets[row], count = d.subject_lengths[row];
      const H5S_seloper_t how = total == 0 ? H5S_SELECT_SET : H5S_SELECT_OR;
      h5::check(H5Sselect_hyperslab(space.get(), how, &first, nullptr, &count, nullptr), what);
      total += count;
    }
    h5::Dataspace chars_memory(h5::check(H5Screate_simple(1, &total, nullptr), what));
    const std::vector<uint8_t> zeros(total, 0);
    h5::check(H5Dwrite(chars.get(), H5T_NATIVE_UINT8, chars_memory.get(), space.get(), H5P_DEFAULT, zeros.data()), what);
    write_elements<uint32_t>(file, kSubjectLengths, H5T_NATIVE_UINT32, with_subject, 0, d.path);
  }
  const std::vector<hsize_t> tombstone_at(in_file_order.begin(), in_file_order.end());
  write_elements<uint8_t>(file, kTombstoned, H5T_NATIVE_UINT8, tombstone_at, 1, d.path);
  h5::check(H5Fflush(file, H5F_SCOPE_GLOBAL), "flushing the erasure of '" + d.path.string() + "'");
  fsync_file(d.path);

  // The file holds the erasure: now the in-memory view follows.
  for (const uint64_t row : in_file_order) {
    if (d.subject_lengths[row] > 0) {
      const std::string subject(d.subject_of(row));
      auto& subject_rows = d.live_rows_by_subject[subject];
      std::erase(subject_rows, row);
      if (subject_rows.empty()) d.live_rows_by_subject.erase(subject);
      std::fill_n(d.subject_chars.begin() + static_cast<std::ptrdiff_t>(d.subject_offsets[row]), d.subject_lengths[row], '\0');
      d.subject_lengths[row] = 0;
    }
    d.tombstoned[row] = 1;
    ++d.tombstoned_count;
    if (d.public_flags[row]) --d.public_live_count;
  }
  return erased;
}

RecordStream::RecordStream(const Dataset& dataset, std::vector<uint64_t> rows, size_t batch_records)
    : dataset_(&dataset), rows_(std::move(rows)), batch_records_(batch_records) {}

bool RecordStream::next(RecordBatch& batch) {
  batch.rows.clear();
  batch.labels.clear();
  batch.features.clear();
  if (position_ >= rows_.size()) return false;
  const size_t count = std::min(batch_records_, rows_.size() - position_);
  batch.rows.assign(rows_.begin() + static_cast<std::ptrdiff_t>(position_),
                    rows_.begin() + static_cast<std::ptrdiff_t>(position_ + count));
  position_ += count;
  batch.labels = dataset_->labels_of(batch.rows);
  batch.features.resize(count * dataset_->layout().bytes_per_record());
  dataset_->read_features(batch.rows, batch.features);
  return true;
}

namespace {
constexpr const char* kJobsAttribute = "lethe_jobs";

std::vector<std::filesystem::path> read_dataset_jobs(hid_t root, const std::filesystem::path& file) {
  std::vector<std::filesystem::path> jobs;
  if (!h5::has_attribute(root, kJobsAttribute)) return jobs;
  const auto text = h5::read_string_attribute(root, kJobsAttribute);
  try {
    for (const auto& job : nlohmann::json::parse(text)) jobs.emplace_back(job.get<std::string>());
  } catch (const nlohmann::json::exception&) {
    throw StorageError(StorageErrorKind::kDamaged, damaged(file, std::string("attribute '") + kJobsAttribute +
                                                                     "' is not a JSON array of paths: '" + text + "'"));
  }
  return jobs;
}
}  // namespace

std::vector<std::filesystem::path> dataset_jobs(const std::filesystem::path& file) {
  h5::silence_error_printing();
  const auto h5file = h5::open_file(file.string(), /*writable=*/false);
  h5::Group root(h5::check(H5Gopen2(h5file.get(), "/", H5P_DEFAULT), "opening the root group of " + file.string()));
  return read_dataset_jobs(root.get(), file);
}

void add_dataset_job(const std::filesystem::path& file, const std::filesystem::path& job_dir) {
  h5::silence_error_printing();
  const auto job = std::filesystem::absolute(job_dir).lexically_normal();
  auto h5file = h5::open_file(file.string(), /*writable=*/true);
  {
    h5::Group root(h5::check(H5Gopen2(h5file.get(), "/", H5P_DEFAULT), "opening the root group of " + file.string()));
    auto jobs = read_dataset_jobs(root.get(), file);
    if (std::find(jobs.begin(), jobs.end(), job) != jobs.end()) return;
    jobs.push_back(job);
    nlohmann::json list = nlohmann::json::array();
    for (const auto& path : jobs) list.push_back(path.string());
    if (h5::has_attribute(root.get(), kJobsAttribute)) {
      h5::check(H5Adelete(root.get(), kJobsAttribute), "replacing attribute 'lethe_jobs' of " + file.string());
    }
    h5::write_string_attribute(root.get(), kJobsAttribute, list.dump());
  }
  h5::check(H5Fflush(h5file.get(), H5F_SCOPE_GLOBAL), "flushing " + file.string());
}

}  // namespace lethe::storage
