// fuzz/fuzz_deletion_request.cpp — any bytes as the JSON body of POST /v1/deletions, through what
// deletion/service.cpp does with it: lethe::deletion::parse_json_body (a refused body is a
// RequestError), then lethe::deletion::parse_deletion_request; a
// RequestError becomes a 400 written with http::json_error. Findings: a crash, any other exception
// (the service would answer 500), a 400 body that cannot be written, or an accepted request that
// does not survive to_json and back.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "deletion/request.h"
#include "fuzz/fuzz_support.h"
#include "http/server.h"

using lethe::fuzz::describe_current_exception;
using lethe::fuzz::finding;
using nlohmann::json;

namespace {

// What deletion/service.cpp answers for a RequestError (its handler's catch): the 400 must be writable.
void check_error_response(const lethe::deletion::RequestError& e) {
  try {
    const auto response = lethe::http::json_error(400, "invalid_request", e.what(), e.field());
    if (response.status != 400 || response.body.empty()) finding("json_error did not give a 400 with a body");
  } catch (...) {
    finding("the 400 response for a rejected deletion request cannot be written (the service answers 500): " +
            describe_current_exception() + "; RequestError field '" + e.field() + "'");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  json body;
  try {
    body = lethe::deletion::parse_json_body(text);
  } catch (const lethe::deletion::RequestError& e) {
    check_error_response(e);
    return 0;
  } catch (...) {
    finding("parsing the body threw " + describe_current_exception());
  }

  lethe::deletion::DeletionRequest request;
  try {
    request = lethe::deletion::parse_deletion_request(body);
  } catch (const lethe::deletion::RequestError& e) {
    check_error_response(e);
    return 0;
  } catch (...) {
    finding("parse_deletion_request threw " + describe_current_exception());
  }

  // Accepted: the stated limits hold, and the request round-trips through its JSON form.
  if (request.subject.has_value() == !request.records.empty()) finding("accepted a request with both or neither of records/subject");
  if (request.records.size() > lethe::deletion::kMaxRecordsPerRequest) finding("accepted more records than allowed");
  try {
    const json again = lethe::deletion::to_json(request);
    const std::string dumped = again.dump();
    const auto reparsed = lethe::deletion::parse_deletion_request(json::parse(dumped));
    if (reparsed.records != request.records || reparsed.subject != request.subject ||
        reparsed.idempotency_key != request.idempotency_key)
      finding("parse_deletion_request(to_json(request)) differs from request");
  } catch (...) {
    finding("an accepted request does not round-trip through to_json: " + describe_current_exception());
  }
  return 0;
}
