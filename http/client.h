// http/client.h — a small synchronous HTTP/1.1 client for `lethe delete --server`, tests and
// the load benchmark: one keep-alive connection, reconnecting when the server closed it, with timeouts.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/server.h"

namespace lethe::http {

// Where the service is: "http://HOST[:PORT][/PREFIX]". base_path is "" or "/prefix" (no trailing '/').
struct Url {
  std::string host;
  unsigned short port = 80;
  std::string base_path;
};

// Parses "http://127.0.0.1:8080" or "http://host:8080/prefix"; throws std::invalid_argument saying
// what is wrong for https (not supported), a missing scheme, a bad port, a query or junk.
[[nodiscard]] Url parse_url(std::string_view text);

// No answer from the server: cannot connect, timed out, or the connection broke mid-request.
class HttpClientError : public std::runtime_error {
 public:
  enum class Kind { connect, timeout, transport };
  HttpClientError(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  [[nodiscard]] Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// Not thread-safe: one Client per thread. Every HTTP answer, 4xx and 5xx included, is returned as a
// Response; only transport failures throw.
class Client {
 public:
  // `timeout` bounds connecting, and sending a request plus reading its response.
  Client(Url url, std::optional<std::string> token, std::chrono::milliseconds timeout);
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // Sends METHOD base_path+target (target starts with '/'; may carry a query) with the bearer token
  // and, when the body is not empty, Content-Type application/json. Reuses the open connection
  // unless the server closed it; an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS) whose
  // reused connection turns out dead is retried once on a new one.
  [[nodiscard]] Response request(std::string_view method, std::string_view target, std::string_view body = {});
  // The same with extra headers (e.g. a Content-Type other than application/json, which a body
  // gets by default).
  [[nodiscard]] Response request(std::string_view method, std::string_view target, std::string_view body,
                                 const std::vector<std::pair<std::string, std::string>>& headers);

  [[nodiscard]] const Url& url() const;
  [[nodiscard]] std::uint64_t connections_opened() const;  // how many times it (re)connected

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lethe::http
