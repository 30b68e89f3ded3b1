// storage/checkpoint_file.h — one checkpoint version as one HDF5 file: each tensor a chunked,
// Fletcher32-checked dataset; metadata (JSON) and a SHA-256 content digest as string attributes.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/checkpoint_tensor.h"

namespace lethe::storage {

// Everything one checkpoint file holds.
struct CheckpointContent {
  std::string name;      // the series the file belongs to
  int version = 0;
  std::string digest;    // lowercase hex SHA-256 (see checkpoint_digest)
  std::string created;   // ISO 8601 UTC, e.g. "2026-11-23T09:15:42Z"
  nlohmann::json metadata;
  std::vector<TensorData> tensors;  // in the order they were written
};

// SHA-256 over a canonical encoding of every tensor's name, type, shape and bytes (in order)
// and of metadata.dump(); the same content always gives the same digest.
[[nodiscard]] std::string checkpoint_digest(const std::vector<TensorData>& tensors, const nlohmann::json& metadata);

// Writes `content` to `path` (truncating; not atomic: the caller commits it) with the digest
// computed here, which it returns. Tensor names must be non-empty and unique.
[[nodiscard]] std::string write_checkpoint_file(const std::filesystem::path& path, const std::string& name,
                                                int version, const std::string& created,
                                                const std::vector<TensorData>& tensors,
                                                const nlohmann::json& metadata);

// Reads a checkpoint file and verifies it: lethe format attributes, every chunk's Fletcher32
// checksum, and the recomputed digest against the stored one. StorageError naming the file
// and what to do when it is missing, not a checkpoint, damaged or altered.
[[nodiscard]] CheckpointContent read_checkpoint_file(const std::filesystem::path& path);

}  // namespace lethe::storage
