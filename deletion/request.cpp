#include "deletion/request.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "storage/record_id.h"

namespace lethe::deletion {

namespace {

using nlohmann::json;

std::string checked_string(const json& value, const std::string& field) {
  if (!value.is_string()) throw RequestError(field, "must be a string");
  auto text = value.get<std::string>();
  // The rule ingest applies too (storage/record_id.h): every stored id can be named here.
  if (const auto problem = storage::record_id_problem(text)) throw RequestError(field, *problem);
  return text;
}

// A second pass over a body json::parse refused, building nothing: where the parser stopped and
// why (its error id), never its message, which quotes the body and names the library.
class JsonErrorLocator : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string& last_token, const nlohmann::json::exception& error) override {
    consumed = position;
    token_length = last_token.size();
    id = error.id;
    return false;
  }

  std::size_t consumed = 0;      // bytes read when it stopped, the offending one included
  std::size_t token_length = 0;  // of the token it stopped in
  int id = 0;                    // nlohmann's error id: 406 is a number out of range, the rest syntax
};

// "line L, column C" (1-based; columns count bytes) of the byte at `offset` of `text`.
std::string line_and_column(std::string_view text, std::size_t offset) {
  offset = std::min(offset, text.size());
  const auto before = text.substr(0, offset);
  const auto line = 1 + std::count(before.begin(), before.end(), '\n');
  const auto line_start = before.rfind('\n');
  const auto column = offset - (line_start == std::string_view::npos ? 0 : line_start + 1) + 1;
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

// The offset of the first byte of `text` that is not part of well-formed UTF-8, if any.
std::optional<std::size_t> first_invalid_utf8(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = byte(i);
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xbf;  // the allowed range of the second byte
    if (c < 0x80) {
      length = 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
      length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {  // no overlong forms, no UTF-16 surrogates
      length = 3;
      low = c == 0xe0 ? 0xa0 : 0x80;
      high = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {  // no overlong forms, nothing beyond U+10FFFF
      length = 4;
      low = c == 0xf0 ? 0x90 : 0x80;
      high = c == 0xf4 ? 0x8f : 0xbf;
    } else {
      return i;
    }
    if (i + length > text.size()) return i;
    for (std::size_t k = 1; k < length; ++k) {
      const unsigned char next = byte(i + k);
      if (k == 1 ? next < low || next > high : next < 0x80 || next > 0xbf) return i;
    }
    i += length;
  }
  return std::nullopt;
}

}  // namespace

nlohmann::json parse_json_body(const std::string& body) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw RequestError("body", "is empty; send a JSON object (docs/API.md)");
  }
  auto parsed = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_discarded()) return parsed;
  JsonErrorLocator locator;
  (void)nlohmann::json::sax_parse(body, &locator);
  if (const auto bad = first_invalid_utf8(body); bad && *bad < std::max<std::size_t>(locator.consumed, 1)) {
    throw RequestError("body", "is not valid JSON: a byte that is not UTF-8 at " + line_and_column(body, *bad) +
                                   "; JSON text must be UTF-8");
  }
  if (locator.id == 406) {
    const auto start = locator.consumed >= locator.token_length ? locator.consumed - locator.token_length : 0;
    throw RequestError("body", "is not valid JSON: number out of range at " + line_and_column(body, start) +
                                   " (beyond a 64-bit float's range)");
  }
  throw RequestError("body", "is not valid JSON: syntax error at " +
                                 line_and_column(body, locator.consumed > 0 ? locator.consumed - 1 : 0));
}

DeletionRequest parse_deletion_request(const json& body) {
  if (!body.is_object()) throw RequestError("body", "must be a JSON object with \"records\" or \"subject\"");
  for (const auto& [key, value] : body.items()) {
    if (key != "records" && key != "subject" && key != "idempotency_key") {
      throw RequestError(key, "unknown field; expected \"records\", \"subject\" or \"idempotency_key\"");
    }
  }
  const bool has_records = body.contains("records");
  const bool has_subject = body.contains("subject");
  if (has_records == has_subject) {
    throw RequestError(has_records ? "subject" : "records", "give exactly one of \"records\" (a list of ids) or \"subject\"");
  }
  DeletionRequest request;
  if (has_records) {
    const auto& records = body.at("records");
    if (!records.is_array()) throw RequestError("records", "must be a list of record ids");
    if (records.empty()) throw RequestError("records", "must name at least one record");
    if (records.size() > kMaxRecordsPerRequest) {
      throw RequestError("records", "has " + std::to_string(records.size()) + " ids; at most " +
                                        std::to_string(kMaxRecordsPerRequest) + " per request: split it");
    }
    std::unordered_set<std::string> seen;
    for (std::size_t i = 0; i < records.size(); ++i) {
      auto id = checked_string(records[i], "records[" + std::to_string(i) + "]");
      if (seen.insert(id).second) request.records.push_back(std::move(id));
    }
  } else {
    request.subject = checked_string(body.at("subject"), "subject");
  }
  if (body.contains("idempotency_key")) request.idempotency_key = checked_string(body.at("idempotency_key"), "idempotency_key");
  return request;
}

json to_json(const DeletionRequest& request) {
  json out = json::object();
  if (request.subject) {
    out["subject"] = *request.subject;
  } else {
    out["records"] = request.records;
  }
  if (request.idempotency_key) out["idempotency_key"] = *request.idempotency_key;
  return out;
}

}  // namespace lethe::deletion
