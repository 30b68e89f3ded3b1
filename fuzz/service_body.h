// fuzz/service_body.h — deletion/service.cpp's parse_body(), mirrored for the fuzz targets: it is
// private to service.cpp, which cannot be built without torch. Same library calls in the same
// order (an empty body refused; json::parse without exceptions; on failure a second, SAX pass that
// locates the error), so a throw that escapes here would escape the service's handler (a 500).
// The wording of the 400 message is not mirrored. Keep in step with service.cpp.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "deletion/request.h"

namespace lethe::fuzz {

// service.cpp's JsonErrorLocator: builds nothing, records where and why the parser stopped.
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
  std::size_t consumed = 0;
  std::size_t token_length = 0;
  int id = 0;
};

// The body as JSON, or deletion::RequestError on "body".
inline nlohmann::json parse_body_as_service_does(const std::string& body) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos)
    throw deletion::RequestError("body", "is empty; send a JSON object (docs/API.md)");
  auto parsed = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_discarded()) return parsed;
  JsonErrorLocator locator;
  (void)nlohmann::json::sax_parse(body, &locator);
  throw deletion::RequestError("body", "is not valid JSON (error " + std::to_string(locator.id) + ")");
}

}  // namespace lethe::fuzz
