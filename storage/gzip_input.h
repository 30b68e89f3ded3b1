// storage/gzip_input.h — sequential reading of a gzip (or plain) input file through zlib, with
// errors that name the file, and truncation detected instead of silently read as a short file.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <string>

namespace lethe::storage {

class GzipInput {
 public:
  // Opens `path`; plain (uncompressed) files are read as they are.
  explicit GzipInput(std::filesystem::path path);
  GzipInput(const GzipInput&) = delete;
  GzipInput& operator=(const GzipInput&) = delete;
  ~GzipInput();

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  // Reads up to `size` bytes; fewer only at the end of the data. Throws on a damaged file.
  size_t read_some(void* out, size_t size);
  // Reads exactly `size` bytes of `what` (e.g. "image 17"); throws naming the file when the
  // data ends early (a truncated file).
  void read_exact(void* out, size_t size, const std::string& what);
  // Reads one line without its "\n" (and "\r"); false at the end of the data.
  bool read_line(std::string& line);
  // Throws unless the data ends here (and its gzip trailer checks out).
  void expect_end(const std::string& after);
  [[nodiscard]] uint64_t bytes_read() const { return bytes_read_; }

 private:
  [[noreturn]] void fail(const std::string& what) const;

  std::filesystem::path path_;
  gzFile file_ = nullptr;
  uint64_t bytes_read_ = 0;
};

}  // namespace lethe::storage
