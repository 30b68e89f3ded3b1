// storage/csv_reader.h — a streaming CSV reader (RFC 4180 fields, quotes within one line) over a
// plain or gzip file, that knows each row's line number for error messages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "storage/gzip_input.h"

namespace lethe::storage {

class CsvReader {
 public:
  explicit CsvReader(const std::filesystem::path& path);

  // Reads the next non-blank row; false at the end. The fields stay valid until the next call.
  bool next(std::vector<std::string_view>& fields);
  [[nodiscard]] uint64_t line() const { return line_; }  // 1-based line of the last row read
  [[nodiscard]] const std::filesystem::path& path() const { return input_.path(); }
  // "'<file>' line <n>" for error messages.
  [[nodiscard]] std::string where() const;

 private:
  GzipInput input_;
  std::string text_;
  uint64_t line_ = 0;
};

// Index of the column named `name` in `header`, or -1.
[[nodiscard]] int find_column(const std::vector<std::string>& header, std::string_view name);

}  // namespace lethe::storage
