// tests/storage/test_dataset_fixtures.h — helpers shared by the dataset, ingest, erasure and CLI
// tests: scratch directories, gzip writers, small IDX files with distinctive images.
#pragma once

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/storage/scratch_files.h"

namespace lethe::storage::dataset_testing {

namespace fs = std::filesystem;

inline fs::path fresh_dir(const std::string& name) { return scratch::fresh_dir("data_test", name); }

inline std::string slurp(const fs::path& path) { return scratch::read_bytes(path); }

inline void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string gzip(const std::string& bytes) {
  z_stream zs{};
  if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2 failed");
  std::string out(deflateBound(&zs, bytes.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) throw std::runtime_error("deflate failed");
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

inline void write_gzip(const fs::path& path, const std::string& bytes) { write_file(path, gzip(bytes)); }

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Pseudo-random bytes unique to `index`: a 784-byte run of them occurs nowhere else by chance,
// so finding it in a file means the record's features are there.
inline std::vector<uint8_t> distinctive_bytes(uint64_t index, size_t size) {
  std::vector<uint8_t> bytes(size);
  uint64_t state = 0x1e7e0000ULL + index * 7919;
  for (size_t i = 0; i < size; i += 8) {
    const uint64_t word = splitmix64(state);
    for (size_t k = 0; k < 8 && i + k < size; ++k) bytes[i + k] = static_cast<uint8_t>(word >> (8 * k));
  }
  return bytes;
}

inline void put_be32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

inline std::string idx_images(uint32_t count, uint32_t rows, uint32_t cols) {
  std::string out;
  put_be32(out, 0x00000803);
  put_be32(out, count);
  put_be32(out, rows);
  put_be32(out, cols);
  for (uint32_t i = 0; i < count; ++i) {
    const auto bytes = distinctive_bytes(i, size_t{rows} * cols);
    out.append(bytes.begin(), bytes.end());
  }
  return out;
}

inline uint8_t label_of(uint32_t index) { return static_cast<uint8_t>((index * 7) % 10); }

inline std::string idx_labels(uint32_t count) {
  std::string out;
  put_be32(out, 0x00000801);
  put_be32(out, count);
  for (uint32_t i = 0; i < count; ++i) out.push_back(static_cast<char>(label_of(i)));
  return out;
}

struct IdxFiles {
  fs::path images;
  fs::path labels;
};

// Writes gzipped IDX files of `count` 28x28 images (distinctive_bytes(i)) and labels label_of(i).
inline IdxFiles write_idx(const fs::path& dir, uint32_t count, const std::string& prefix = "small") {
  IdxFiles files{dir / (prefix + "-images-idx3-ubyte.gz"), dir / (prefix + "-labels-idx1-ubyte.gz")};
  write_gzip(files.images, idx_images(count, 28, 28));
  write_gzip(files.labels, idx_labels(count));
  return files;
}

inline bool contains(const std::string& haystack, const std::vector<uint8_t>& needle) {
  return haystack.find(std::string(needle.begin(), needle.end())) != std::string::npos;
}

}  // namespace lethe::storage::dataset_testing
