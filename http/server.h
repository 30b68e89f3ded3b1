// http/server.h — the coordinator's HTTP/1.1 server: keep-alive connections on Boost.Beast,
// bearer-token auth, body and connection limits, slow-client timeouts and a draining stop().
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace lethe::http {

struct Request {
  std::string method;  // as sent: "GET", "POST", ...
  std::string path;    // the target up to '?', not percent-decoded: "/v1/deletions/42"
  std::string query;   // after '?', without it; empty when absent
  std::string body;
  std::string remote;  // peer "address:port"
  std::vector<std::pair<std::string, std::string>> headers;  // in the order sent

  // The first header named `name` (case-insensitive), if any.
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  // Extra headers (Retry-After, Location, ...). Content-Length and Transfer-Encoding are set by the
  // server from the body; Connection from keep-alive.
  std::vector<std::pair<std::string, std::string>> headers;

  // The first header named `name` (case-insensitive), if any (responses read by the Client).
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
};

// Called on a server thread, once per request; may block briefly (an fsync). An exception becomes
// a 500 with a generic message (the exception text goes to the log, not to the client).
using Handler = std::function<Response(const Request&)>;

struct ServerOptions {
  std::string address = "127.0.0.1";  // an IP address ("0.0.0.0" for every interface) or "localhost"
  unsigned short port = 8080;          // 0 = an ephemeral port, read back with Server::port()
  std::optional<std::string> bearer_token;  // required on every path except public_paths when set
  std::vector<std::string> public_paths = {"/healthz"};
  // 413 beyond. 16 MiB holds the largest JSON predict batch (1024 rows of 784 pixel values) and a
  // 16384-row binary one (docs/API.md).
  std::size_t body_limit = std::size_t{16} << 20;
  // A complete request header must arrive within this of connecting or of the previous response
  // (so it is also the keep-alive idle limit); capped by request_timeout.
  std::chrono::milliseconds header_timeout{5000};
  std::chrono::milliseconds request_timeout{10000};  // a request (headers and body) must arrive within
                                                     // this; also the limit on writing a response
  int threads = 2;
  // At the limit a new connection takes the slot of the connection that has waited longest for a
  // request header (idle keep-alive, or a request not sent yet), which is closed; when every
  // connection has a request in progress the new one is answered 503 (Retry-After: 1) and closed.
  std::size_t max_connections = 256;
};

// Counters for /metrics, read without stopping the server.
struct ServerStats {
  std::uint64_t connections_accepted = 0;  // all accepted connections, refused ones included
  std::uint64_t connections_refused = 0;   // answered 503 at the max_connections limit
  std::uint64_t connections_evicted = 0;   // waiting for a request header, closed at the limit to admit another
  std::uint64_t open_connections = 0;      // currently open (refused and evicted ones not counted)
  std::uint64_t requests = 0;              // responses sent, every status
  std::array<std::uint64_t, 5> responses_by_class{};  // [0] 1xx, [1] 2xx, [2] 3xx, [3] 4xx, [4] 5xx
  std::uint64_t timeouts = 0;  // connections cut off because a started request did not arrive in time
};

// The server could not start: address in use, not an IP address, no permission for the port.
class ServerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Server {
 public:
  Server(ServerOptions options, Handler handler);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  // stop(0 ms) if still running

  // Binds and listens (ServerError naming address:port and the fix if it cannot), then starts the
  // IO threads. Once.
  void start();
  [[nodiscard]] unsigned short port() const;  // the bound port (after start)

  // Stops accepting (new connections are refused), closes idle keep-alive connections, lets
  // requests in flight finish and their responses be written for up to `drain`, then closes
  // everything and joins the IO threads. A handler that is running is waited for (it cannot be
  // interrupted). Idempotent. Not from a handler (it joins the thread the handler runs on).
  void stop(std::chrono::milliseconds drain);

  [[nodiscard]] ServerStats stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// A JSON response: body.dump(), Content-Type application/json. Bytes that are not UTF-8 (a client's
// path or header echoed in a message) are written as U+FFFD instead of throwing.
[[nodiscard]] Response json_response(int status, const nlohmann::json& body);
// {"error": {"code": code, "message": message, "field": field}}; "field" only when not empty.
[[nodiscard]] Response json_error(int status, std::string_view code, std::string_view message,
                                  std::string_view field = {});

}  // namespace lethe::http
