// fuzz/fuzz_support.h — what the fuzz targets share: a scratch directory for targets whose code
// under test reads and writes files, and `finding()`, which turns an unexpected outcome into a crash
// that libFuzzer records (the input is saved as crash-<sha1>).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace lethe::fuzz {

// Prints what went wrong and aborts: libFuzzer reports the input that led here.
[[noreturn]] inline void finding(std::string_view what) {
  std::fprintf(stderr, "\n==FINDING== %.*s\n", static_cast<int>(what.size()), what.data());
  std::fflush(stderr);
  std::abort();
}

// "exception of type T: what()" for the exception in flight (call from a catch block).
inline std::string describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return std::string("an unexpected exception (") + typeid(e).name() + "): " + e.what();
  } catch (...) {
    return "an unexpected exception of a non-standard type";
  }
}

// A private directory for one fuzzing process, on /dev/shm when it exists (the ingest fsyncs every
// file it commits; tmpfs makes that free), removed when the process exits normally.
class ScratchDir {
 public:
  ScratchDir() {
    std::error_code ec;
    std::filesystem::path base = "/dev/shm";
    if (!std::filesystem::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0)
      base = std::filesystem::temp_directory_path();
    std::string pattern = (base / "lethe-fuzz-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) finding("cannot create a scratch directory under " + base.string());
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  // Writes `bytes` to `name` in the directory and returns its path.
  [[nodiscard]] std::filesystem::path write(const std::string& name, const uint8_t* bytes, size_t size) const {
    const auto file = path_ / name;
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes), static_cast<std::streamsize>(size));
    if (!out) finding("cannot write the scratch file " + file.string());
    return file;
  }

  // Removes every file in the directory (between inputs).
  void clear() const {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path_, ec)) std::filesystem::remove_all(entry.path(), ec);
  }

 private:
  std::filesystem::path path_;
};

}  // namespace lethe::fuzz
