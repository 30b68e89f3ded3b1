// fuzz/fuzz_http_request.cpp — raw bytes from a client connection through what http/server.cpp
// does with them: Beast's request_parser<string_body> with the server's limits (16 KiB of headers;
// no body limit until the headers pass, then ServerOptions::body_limit, 1 MiB), the target check,
// the bearer-token check (http/auth.h), conversion to lethe::http::Request, and for
// POST /v1/deletions the body through deletion/service.cpp's parse_body + parse_deletion_request.
// Keep-alive requests that follow in the same bytes are parsed like the server's next read.
//
// Mirrored, not called (they are private to http/server.cpp's Session, which is not changed for
// fuzzing): the header/body read sequence, the checks of Session::on_header, the Beast message ->
// http::Request conversion of Session::handle, Server::Impl::requires_token and the service's 400/404
// answers. Called for real: Beast's parser, bearer_matches, Request::header, json_error,
// parse_json_body (the service's body parsing), parse_deletion_request.
// Findings: a crash, an exception escaping, an answer that cannot be written, or bearer_matches
// disagreeing with its documented contract ("Bearer <token>", scheme case-insensitive).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "deletion/request.h"
#include "fuzz/fuzz_support.h"
#include "http/auth.h"
#include "http/server.h"

namespace bhttp = boost::beast::http;
using lethe::fuzz::describe_current_exception;
using lethe::fuzz::finding;

namespace {

// The server's limits (http/server.cpp kHeaderLimit; ServerOptions::body_limit's default, which
// `lethe serve` keeps) and a token of the length `openssl rand -hex 32` gives.
constexpr std::uint32_t kHeaderLimit = 16 * 1024;
constexpr std::size_t kBodyLimit = 1 << 20;
constexpr std::string_view kToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr int kMaxRequestsPerInput = 16;

std::string_view std_view(boost::beast::string_view text) { return {text.data(), text.size()}; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// A response as the server writes it: json_error's body must serialise (json::dump throws on
// invalid UTF-8; in the server that becomes a 500 or, outside a handler, an exception in the IO thread).
void answer(int status, std::string_view code, const std::string& message, std::string_view field = {}) {
  try {
    const auto response = lethe::http::json_error(status, code, message, field);
    if (response.status != status) finding("json_error changed the status");
  } catch (...) {
    finding("the " + std::to_string(status) + " '" + std::string(code) + "' response cannot be written: " +
            describe_current_exception());
  }
}

// bearer_matches against its contract in http/auth.h.
void check_bearer(std::string_view authorization) {
  const bool expected = authorization.size() >= 7 && iequals(authorization.substr(0, 7), "Bearer ") &&
                        authorization.substr(7) == kToken;
  if (lethe::http::bearer_matches(authorization, kToken) != expected)
    finding("bearer_matches disagrees with its contract on an Authorization value of " +
            std::to_string(authorization.size()) + " bytes: returned " + (expected ? "false" : "true"));
}

// Feeds `input` from `offset` to the parser until `done` says stop; the end of the input is the
// client closing the connection. Returns false when the read failed (the server answers and closes)
// or the connection ended.
template <typename Done>
bool feed(bhttp::request_parser<bhttp::string_body>& parser, std::string_view input, std::size_t& offset, Done done) {
  while (!done()) {
    boost::beast::error_code ec;
    bool closed = offset == input.size();
    if (!closed) {
      const std::size_t used = parser.put(boost::asio::buffer(input.data() + offset, input.size() - offset), ec);
      offset += used;
      if (ec == bhttp::error::need_more || (!ec && used == 0)) {
        ec = {};
        if (used == 0) closed = true;  // the parser needs bytes the client never sends
      }
    }
    if (closed) {
      parser.put_eof(ec);
      if (ec == bhttp::error::end_of_stream) return false;  // closed between requests: no answer
      if (!ec && !done()) return false;
    }
    if (ec) {
      // Session::read_failed: 413, 431 or 400 for a parse error.
      if (ec == bhttp::error::body_limit)
        answer(413, "body_too_large", "request body exceeds the limit of " + std::to_string(kBodyLimit) + " bytes");
      else if (ec == bhttp::error::header_limit)
        answer(431, "headers_too_large", "request headers exceed the limit of " + std::to_string(kHeaderLimit) + " bytes");
      else
        answer(400, "bad_request", "malformed HTTP request: " + ec.message());
      return false;
    }
  }
  return true;
}

// deletion/service.cpp for POST /v1/deletions up to the coordinator: parse_body, then
// parse_deletion_request; a RequestError is a 400.
void deletion_body(const lethe::http::Request& request) {
  try {
    (void)lethe::deletion::parse_deletion_request(lethe::deletion::parse_json_body(request.body));
  } catch (const lethe::deletion::RequestError& e) {
    answer(400, "invalid_request", e.what(), e.field());
  }
}

// One request from `offset`; false when the connection ends after it.
bool one_request(std::string_view input, std::size_t& offset) {
  bhttp::request_parser<bhttp::string_body> parser;
  parser.header_limit(kHeaderLimit);
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  if (!feed(parser, input, offset, [&] { return parser.is_header_done(); })) return false;

  // Session::on_header.
  const auto& head = parser.get();
  const std::string_view target = std_view(head.target());
  const std::string_view path = target.substr(0, target.find('?'));
  if (target.empty() || target.front() != '/') {
    answer(400, "bad_request", "request target must be an absolute path such as /v1/models");
    return false;
  }
  const std::string_view authorization = std_view(head[bhttp::field::authorization]);
  check_bearer(authorization);
  const bool requires_token = path != "/healthz";  // Server::Impl::requires_token, public_paths' default
  if (requires_token && !lethe::http::bearer_matches(authorization, kToken)) {
    answer(401, "unauthorized", "wrong bearer token");
    return !parser.is_done() ? false : head.keep_alive();
  }
  const auto length = parser.content_length();
  if (length && *length > kBodyLimit) {
    answer(413, "body_too_large", "request body of " + std::to_string(*length) + " bytes exceeds the limit");
    return false;
  }
  if (!parser.is_done()) {
    parser.body_limit(kBodyLimit);
    if (!feed(parser, input, offset, [&] { return parser.is_done(); })) return false;
  }

  // Session::handle: the Beast message as an http::Request.
  auto message = parser.release();
  lethe::http::Request request;
  request.method = std::string(message.method_string());
  const std::string_view full = std_view(message.target());
  const auto question = full.find('?');
  request.path = std::string(full.substr(0, question));
  if (question != std::string_view::npos) request.query = std::string(full.substr(question + 1));
  request.body = std::move(message.body());
  request.remote = "127.0.0.1:40000";
  for (const auto& field : message) request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));

  // What handlers read.
  const auto content_type = request.header("Content-Type");
  const auto auth_again = request.header("authorization");
  if (auth_again.has_value() != (message.find(bhttp::field::authorization) != message.end()))
    finding("Request::header(\"authorization\") disagrees with Beast's parsed fields");
  (void)content_type;

  if (request.path == "/v1/deletions" && request.method == "POST") {
    deletion_body(request);
  } else if (request.path != "/healthz") {
    // deletion/service.cpp's answer for a path it does not serve.
    answer(404, "not_found", "no such endpoint: " + request.path + " (see docs/API.md)");
  }
  return message.keep_alive();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::size_t offset = 0;
  try {
    for (int i = 0; i < kMaxRequestsPerInput && offset < input.size(); ++i) {
      const std::size_t before = offset;
      if (!one_request(input, offset) || offset == before) break;
    }
  } catch (...) {
    finding("an exception escaped the request path: " + describe_current_exception());
  }
  return 0;
}
