// tests/storage/scratch_files.h — scratch directories and whole-file reads shared by the
// storage tests (durable files, datasets, checkpoints).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace lethe::storage::scratch {

// An empty directory under the temp dir, unique to `family`, `name` and this process.
inline std::filesystem::path fresh_dir(const std::string& family, const std::string& name) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("lethe_" + family + "_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A file's raw bytes.
inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace lethe::storage::scratch
