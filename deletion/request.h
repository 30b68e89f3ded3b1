// deletion/request.h — a deletion request as clients send it (HTTP body or `lethe delete`):
// record ids or one subject, plus an optional idempotency key; parsed strictly, errors name the field.
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/record_id.h"

namespace lethe::deletion {

// A malformed request; field() is the JSON path of the offending field ("records[2]").
class RequestError : public std::invalid_argument {
 public:
  RequestError(std::string field, const std::string& message)
      : std::invalid_argument(field + ": " + message), field_(std::move(field)) {}
  [[nodiscard]] const std::string& field() const { return field_; }

 private:
  std::string field_;
};

struct DeletionRequest {
  std::vector<std::string> records;        // distinct ids, in the order given; empty for a subject
  std::optional<std::string> subject;      // set instead of records
  std::optional<std::string> idempotency_key;
};

inline constexpr std::size_t kMaxRecordsPerRequest = 10000;
inline constexpr std::size_t kMaxIdLength = storage::kMaxRecordIdLength;  // ids, subjects and idempotency keys

// {"records": ["id", ...]} or {"subject": "s"}, optionally "idempotency_key": "k". Exactly one of
// records/subject; strings non-empty, at most kMaxIdLength bytes, no control characters; at most
// kMaxRecordsPerRequest ids; repeated ids are kept once; unknown fields are refused.
[[nodiscard]] DeletionRequest parse_deletion_request(const nlohmann::json& body);

// A request body as JSON. RequestError on "body" when it is empty or not JSON, saying what is wrong
// and where (line and column: a byte that is not UTF-8, a number out of range, a syntax error)
// without quoting the body or naming the parser. Never throws anything else.
[[nodiscard]] nlohmann::json parse_json_body(const std::string& body);

// The inverse of parse_deletion_request.
[[nodiscard]] nlohmann::json to_json(const DeletionRequest& request);

}  // namespace lethe::deletion
