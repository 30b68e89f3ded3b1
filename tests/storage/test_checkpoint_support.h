// tests/storage/test_checkpoint_support.h — helpers shared by the checkpoint store tests:
// scratch directories, tensors with distinctive bytes, and raw scans and edits of files.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "storage/checkpoint_store.h"
#include "tests/storage/scratch_files.h"

namespace lethe::storage::testing {

namespace fs = std::filesystem;

inline fs::path fresh_dir(const std::string& name) { return scratch::fresh_dir("ckpt", name); }

// 256 float32 values that occur nowhere else: their bytes identify the checkpoint on disk.
inline TensorData distinctive_tensor(const std::string& name, std::uint32_t seed) {
  std::vector<float> values(256);
  std::uint32_t state = seed * 2654435761u + 12345u;
  for (float& v : values) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(state >> 8) / 1024.0f + 0.125f;
  }
  return TensorData::from_floats(name, {16, 16}, values);
}

inline std::vector<std::byte> slurp(const fs::path& path) {
  const std::string chars = scratch::read_bytes(path);
  std::vector<std::byte> out(chars.size());
  std::transform(chars.begin(), chars.end(), out.begin(), [](char c) { return static_cast<std::byte>(c); });
  return out;
}

inline void spit(const fs::path& path, const std::vector<std::byte>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Offset of `needle` in the file, or -1.
inline std::int64_t find_bytes(const fs::path& path, const std::vector<std::byte>& needle) {
  const std::vector<std::byte> haystack = slurp(path);
  const auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end());
  return it == haystack.end() ? -1 : static_cast<std::int64_t>(it - haystack.begin());
}

// Every regular file under `root` whose raw bytes contain `needle`.
inline std::vector<fs::path> files_containing(const fs::path& root, const std::vector<std::byte>& needle) {
  std::vector<fs::path> hits;
  for (const auto& entry : fs::recursive_directory_iterator(root))
    if (entry.is_regular_file() && find_bytes(entry.path(), needle) >= 0) hits.push_back(entry.path());
  return hits;
}

// Flips one byte in the middle of `needle`'s first occurrence in the file.
inline void flip_byte_of(const fs::path& path, const std::vector<std::byte>& needle) {
  std::vector<std::byte> bytes = slurp(path);
  const std::int64_t at = find_bytes(path, needle);
  if (at < 0) throw std::runtime_error("pattern not found in " + path.string());
  bytes[static_cast<std::size_t>(at) + needle.size() / 2] ^= std::byte{0x5a};
  spit(path, bytes);
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace lethe::storage::testing
