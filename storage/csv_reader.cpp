#include "storage/csv_reader.h"

#include "storage/error.h"

namespace lethe::storage {

CsvReader::CsvReader(const std::filesystem::path& path) : input_(path) {}

std::string CsvReader::where() const { return "'" + input_.path().string() + "' line " + std::to_string(line_); }

bool CsvReader::next(std::vector<std::string_view>& fields) {
  fields.clear();
  do {
    if (!input_.read_line(text_)) return false;
    ++line_;
  } while (text_.find_first_not_of(" \t") == std::string::npos);

  // Split in place: unquoting only removes characters, so each field is compacted into text_.
  char* const base = text_.data();
  const size_t size = text_.size();
  size_t read = 0, write = 0;
  while (true) {
    const size_t start = write;
    if (read < size && base[read] == '"') {
      ++read;
      bool closed = false;
      while (read < size) {
        if (base[read] == '"') {
          if (read + 1 < size && base[read + 1] == '"') {
            base[write++] = '"';
            read += 2;
            continue;
          }
          ++read;
          closed = true;
          break;
        }
        base[write++] = base[read++];
      }
      if (!closed)
        throw StorageError(where() + ": a quoted field is not closed on this line (fields may not span lines)");
      if (read < size && base[read] != ',')
        throw StorageError(where() + ", column " + std::to_string(fields.size() + 1) +
                           ": unexpected text after a closing quote");
    } else {
      while (read < size && base[read] != ',') base[write++] = base[read++];
    }
    fields.emplace_back(base + start, write - start);
    if (read >= size) break;
    ++read;  // the comma
    ++write;
  }
  return true;
}

int find_column(const std::vector<std::string>& header, std::string_view name) {
  for (size_t i = 0; i < header.size(); ++i)
    if (header[i] == name) return static_cast<int>(i);
  return -1;
}

}  // namespace lethe::storage
