#include "deletion/request.h"

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

}  // namespace

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
