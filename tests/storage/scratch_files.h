// tests/storage/scratch_files.h — scratch directories (removed at exit) and whole-file reads shared
// by the test suites.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

namespace lethe::storage::scratch {

// The directories fresh_dir made, removed when the test process exits normally (forked children
// that _exit or are killed leave them to the parent). LETHE_KEEP_SCRATCH=1 keeps them to look at.
class ScratchDirs {
 public:
  static ScratchDirs& instance() {
    static ScratchDirs dirs;
    return dirs;
  }
  void add(const std::filesystem::path& dir) { dirs_.push_back(dir); }
  ScratchDirs(const ScratchDirs&) = delete;
  ScratchDirs& operator=(const ScratchDirs&) = delete;
  ~ScratchDirs() {
    if (std::getenv("LETHE_KEEP_SCRATCH") != nullptr) return;
    std::error_code ignored;
    for (const auto& dir : dirs_) std::filesystem::remove_all(dir, ignored);
  }

 private:
  ScratchDirs() = default;
  std::vector<std::filesystem::path> dirs_;
};

// An empty directory under the temp dir, unique to `family`, `name` and this process; removed at exit.
inline std::filesystem::path fresh_dir(const std::string& family, const std::string& name) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("lethe_" + family + "_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  ScratchDirs::instance().add(dir);
  return dir;
}

// A file's raw bytes.
inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace lethe::storage::scratch
