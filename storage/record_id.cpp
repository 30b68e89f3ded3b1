#include "storage/record_id.h"

#include <cstdio>

#include "storage/error.h"

namespace lethe::storage {

namespace {

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

std::string hex_byte(unsigned char c) {
  char text[8];
  std::snprintf(text, sizeof text, "0x%02x", c);
  return text;
}

}  // namespace

std::optional<std::string> record_id_problem(std::string_view text) {
  if (text.empty()) return "must not be empty";
  if (text.size() > kMaxRecordIdLength)
    return "is " + std::to_string(text.size()) + " bytes; at most " + std::to_string(kMaxRecordIdLength) + " allowed";
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (is_control(c)) return "contains a control character (" + hex_byte(c) + " at byte " + std::to_string(i) + ")";
  }
  return std::nullopt;
}

void validate_record_id(std::string_view text, std::string_view what, std::string_view where) {
  const auto problem = record_id_problem(text);
  if (!problem) return;
  throw StorageError(StorageErrorKind::kRefused,
                     std::string(where) + ": " + std::string(what) + " '" + printable_id(text) + "' " + *problem +
                         "; ids and subjects must be non-empty, at most " + std::to_string(kMaxRecordIdLength) +
                         " bytes, without control characters, so that a deletion request can name them. "
                         "Fix the input and ingest again");
}

std::string printable_id(std::string_view text) {
  constexpr std::size_t kShown = 64;
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < kShown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (is_control(c)) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    } else {
      out += text[i];
    }
  }
  if (text.size() > kShown) out += "...";
  return out;
}

}  // namespace lethe::storage
