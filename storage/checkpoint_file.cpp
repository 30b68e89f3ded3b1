#include "storage/checkpoint_file.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>

#include "storage/hashing.h"
#include "storage/hdf5.h"

namespace lethe::storage {
namespace {

constexpr std::string_view kFormat = "lethe-checkpoint";
constexpr std::string_view kFormatVersion = "1";
// Chunks of at most 1 MiB keep a Fletcher32 failure local and reads bounded.
constexpr std::size_t kChunkBytes = std::size_t{1} << 20;

// The Debian HDF5 build is not guaranteed thread-safe: serialise this file's HDF5 calls.
std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

hid_t file_type_of(TensorType type) {
  switch (type) {
    case TensorType::kFloat32: return H5T_IEEE_F32LE;
    case TensorType::kFloat64: return H5T_IEEE_F64LE;
    case TensorType::kInt64: return H5T_STD_I64LE;
    case TensorType::kInt32: return H5T_STD_I32LE;
    case TensorType::kUInt8: return H5T_STD_U8LE;
  }
  throw StorageError("unknown tensor type code " + std::to_string(static_cast<int>(type)));
}

std::string dataset_name(std::size_t index) {
  std::array<char, 32> buffer{};
  std::snprintf(buffer.data(), buffer.size(), "tensor_%06zu", index);
  return buffer.data();
}

void write_tensor(hid_t file, const std::string& path, std::size_t index, const TensorData& tensor) {
  const std::string where = "writing tensor '" + tensor.name + "' to '" + path + "'";
  const auto count = static_cast<hsize_t>(tensor.element_count());
  // Stored flat with the shape in an attribute, so scalars and empty tensors need no special
  // layout. Chunked layouts need a non-zero chunk: an empty tensor gets an extensible dataspace.
  const hsize_t dims[1] = {count};
  const hsize_t max_dims[1] = {count == 0 ? H5S_UNLIMITED : count};
  h5::Dataspace space(h5::check(H5Screate_simple(1, dims, max_dims), where));
  h5::PropList create(h5::check(H5Pcreate(H5P_DATASET_CREATE), where));
  const hsize_t chunk[1] = {std::clamp<hsize_t>(kChunkBytes / element_size(tensor.type), 1, std::max<hsize_t>(count, 1))};
  h5::check(H5Pset_chunk(create.get(), 1, chunk), where + " (chunking)");
  h5::check(H5Pset_fletcher32(create.get()), where + " (Fletcher32 filter)");
  h5::Dataset dataset(h5::check(H5Dcreate2(file, dataset_name(index).c_str(), file_type_of(tensor.type), space.get(),
                                           H5P_DEFAULT, create.get(), H5P_DEFAULT),
                                where));
  if (count > 0)
    h5::check(H5Dwrite(dataset.get(), file_type_of(tensor.type), H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.bytes.data()),
              where);
  h5::write_string_attribute(dataset.get(), "name", tensor.name);
  h5::write_string_attribute(dataset.get(), "dtype", std::string(type_name(tensor.type)));
  h5::write_string_attribute(dataset.get(), "shape", nlohmann::json(tensor.shape).dump());
}

// Errors name the tensor but not the file: read_checkpoint_file adds it and the remedy.
TensorData read_tensor(hid_t file, std::size_t index) {
  const std::string object = dataset_name(index);
  const std::string where = "reading dataset '" + object + "'";
  h5::Dataset dataset(h5::check(H5Dopen2(file, object.c_str(), H5P_DEFAULT), where));
  TensorData tensor;
  tensor.name = h5::read_string_attribute(dataset.get(), "name");
  tensor.type = parse_tensor_type(h5::read_string_attribute(dataset.get(), "dtype"));
  tensor.shape = nlohmann::json::parse(h5::read_string_attribute(dataset.get(), "shape")).get<std::vector<std::int64_t>>();
  const std::string of_tensor = "tensor '" + tensor.name + "' (dataset '" + object + "')";
  h5::Datatype stored(h5::check(H5Dget_type(dataset.get()), where));
  if (h5::check(H5Tequal(stored.get(), file_type_of(tensor.type)), where) <= 0)
    throw StorageError(of_tensor + " is stored with a type other than its declared " +
                       std::string(type_name(tensor.type)) + "");
  h5::Dataspace space(h5::check(H5Dget_space(dataset.get()), where));
  const hssize_t stored_count = h5::check(H5Sget_simple_extent_npoints(space.get()), where);
  if (stored_count != tensor.element_count())
    throw StorageError(of_tensor + " holds " + std::to_string(stored_count) + " elements but its shape says " +
                       std::to_string(tensor.element_count()));
  tensor.bytes.resize(static_cast<std::size_t>(stored_count) * element_size(tensor.type));
  if (stored_count > 0 && H5Dread(dataset.get(), file_type_of(tensor.type), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                  tensor.bytes.data()) < 0)
    throw StorageError(of_tensor + " cannot be read: " + h5::last_error_message());
  return tensor;
}

}  // namespace

std::string checkpoint_digest(const std::vector<TensorData>& tensors, const nlohmann::json& metadata) {
  Sha256 sha;
  sha.update_text("lethe-checkpoint-digest-v1");
  sha.update_u64(tensors.size());
  for (const TensorData& tensor : tensors) {
    sha.update_text(tensor.name);
    sha.update_text(type_name(tensor.type));
    sha.update_u64(tensor.shape.size());
    for (std::int64_t dim : tensor.shape) sha.update_u64(static_cast<std::uint64_t>(dim));
    sha.update_u64(tensor.bytes.size());
    sha.update(tensor.bytes.data(), tensor.bytes.size());
  }
  sha.update_text(metadata.dump());
  return sha.hex();
}

std::string write_checkpoint_file(const std::filesystem::path& path, const std::string& name, int version,
                                  const std::string& created, const std::vector<TensorData>& tensors,
                                  const nlohmann::json& metadata) {
  std::set<std::string_view> seen;
  for (const TensorData& tensor : tensors) {
    tensor.validate();
    if (!seen.insert(tensor.name).second)
      throw StorageError("checkpoint '" + name + "' has two tensors named '" + tensor.name +
                         "': give every tensor a unique name");
  }
  const std::string digest = checkpoint_digest(tensors, metadata);
  std::lock_guard lock(hdf5_mutex());
  h5::File file = h5::create_file(path.string());
  const hid_t root = file.get();
  h5::write_string_attribute(root, "lethe_format", std::string(kFormat));
  h5::write_string_attribute(root, "lethe_format_version", std::string(kFormatVersion));
  h5::write_string_attribute(root, "checkpoint_name", name);
  h5::write_string_attribute(root, "checkpoint_version", std::to_string(version));
  h5::write_string_attribute(root, "created", created);
  h5::write_string_attribute(root, "metadata", metadata.dump());
  h5::write_string_attribute(root, "digest", digest);
  h5::write_string_attribute(root, "tensor_count", std::to_string(tensors.size()));
  for (std::size_t i = 0; i < tensors.size(); ++i) write_tensor(root, path.string(), i, tensors[i]);
  h5::check(H5Fflush(root, H5F_SCOPE_GLOBAL), "flushing '" + path.string() + "'");
  return digest;
}

CheckpointContent read_checkpoint_file(const std::filesystem::path& path) {
  const std::string file_name = path.string();
  std::lock_guard lock(hdf5_mutex());
  h5::File file = h5::open_file(file_name, /*writable=*/false);
  const hid_t root = file.get();
  if (!h5::has_attribute(root, "lethe_format") || h5::read_string_attribute(root, "lethe_format") != kFormat)
    throw StorageError("'" + file_name + "' is an HDF5 file but not a lethe checkpoint (no lethe_format = \"" +
                       std::string(kFormat) + "\" attribute): point at a file written by CheckpointStore");
  const std::string format_version = h5::has_attribute(root, "lethe_format_version")
                                         ? h5::read_string_attribute(root, "lethe_format_version")
                                         : "(none)";
  if (format_version != kFormatVersion)
    throw StorageError("checkpoint file '" + file_name + "' has format version " + format_version +
                       ", which this build does not read (it reads version " + std::string(kFormatVersion) +
                       "): use the lethe build that wrote it");
  const std::string damaged = "): the file is damaged or was altered; load an earlier committed version, or purge this one";
  CheckpointContent content;
  try {
    content.name = h5::read_string_attribute(root, "checkpoint_name");
    content.version = std::stoi(h5::read_string_attribute(root, "checkpoint_version"));
    content.created = h5::read_string_attribute(root, "created");
    content.metadata = nlohmann::json::parse(h5::read_string_attribute(root, "metadata"));
    content.digest = h5::read_string_attribute(root, "digest");
    const std::size_t count = std::stoul(h5::read_string_attribute(root, "tensor_count"));
    for (std::size_t i = 0; i < count; ++i) content.tensors.push_back(read_tensor(root, i));
  } catch (const nlohmann::json::exception& e) {
    throw StorageError("checkpoint file '" + file_name + "' cannot be read (malformed attribute: " + e.what() +
                       damaged);
  } catch (const std::logic_error& e) {  // std::stoi and friends
    throw StorageError("checkpoint file '" + file_name + "' cannot be read (malformed number attribute: " +
                       e.what() + damaged);
  } catch (const StorageError& e) {
    throw StorageError("checkpoint file '" + file_name + "' cannot be read (" + e.what() + damaged);
  }
  const std::string actual = checkpoint_digest(content.tensors, content.metadata);
  if (actual != content.digest)
    throw StorageError("checkpoint file '" + file_name + "' fails its SHA-256 check (stored " + content.digest +
                       ", computed " + actual + "): its tensors or metadata were altered; load an earlier "
                       "committed version, or purge this one");
  return content;
}

}  // namespace lethe::storage
