// storage/record_id.h — the one rule for record ids (and subjects): what ingest accepts is exactly
// what a deletion request can name (deletion/request.h), so no stored record is undeletable.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace lethe::storage {

// The longest id (or subject) in bytes that ingest stores and a deletion request may name.
inline constexpr std::size_t kMaxRecordIdLength = 256;

// Why `text` cannot be a record id or subject: "must not be empty", "is 300 bytes; at most 256
// allowed", "contains a control character (0x0a at byte 4)"; nullopt when it follows the rule
// (non-empty, at most kMaxRecordIdLength bytes, no byte below 0x20 nor 0x7f).
[[nodiscard]] std::optional<std::string> record_id_problem(std::string_view text);

// Throws StorageError (kRefused) "<where>: <what> <problem>; ids and subjects must be non-empty,
// at most 256 bytes, without control characters" when `text` breaks the rule.
void validate_record_id(std::string_view text, std::string_view what, std::string_view where);

// `text` for an error message: control characters as \xNN, cut after 64 bytes ("...").
[[nodiscard]] std::string printable_id(std::string_view text);

}  // namespace lethe::storage
