#include "http/client.h"

#include <poll.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "http/beast.h"

namespace lethe::http {

namespace {

constexpr std::uint64_t kResponseBodyLimit = 64u << 20;

std::invalid_argument url_error(std::string_view text, const std::string& why) {
  return std::invalid_argument("server URL '" + std::string(text) + "': " + why +
                               "; expected http://HOST[:PORT][/PREFIX], e.g. http://127.0.0.1:8080");
}

bool valid_host_name(std::string_view host) {
  return !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

bool is_idempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "PUT" || method == "DELETE" || method == "OPTIONS";
}

// A reused connection that the server had closed: safe to retry an idempotent request.
bool closed_by_peer(const error_code& ec) {
  return ec == asio::error::eof || ec == bhttp::error::end_of_stream || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::connection_aborted;
}

std::string lowercase_first(std::string text) {
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

}  // namespace

Url parse_url(std::string_view text) {
  constexpr std::string_view kScheme = "http://";
  const auto scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) throw url_error(text, "no scheme");
  std::string scheme(text.substr(0, scheme_end));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (scheme == "https") {
    throw url_error(text, "https is not supported: the service speaks plain HTTP and listens on loopback by default; "
                          "reach a remote one through an SSH tunnel or a TLS-terminating proxy");
  }
  if (scheme != "http") throw url_error(text, "unsupported scheme '" + scheme + "'");
  const std::string_view rest = text.substr(kScheme.size());
  const auto slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (path.find_first_of("?#") != std::string_view::npos) throw url_error(text, "a query or fragment is not allowed");
  if (authority.find('@') != std::string_view::npos) {
    throw url_error(text, "credentials in the URL are not supported (pass the token with --token-file)");
  }

  Url url;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) throw url_error(text, "unterminated '[' in the IPv6 address");
    url.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') throw url_error(text, "junk after the IPv6 address");
    if (!after.empty()) port_text = after.substr(1);
    error_code ec;
    (void)asio::ip::make_address_v6(url.host, ec);
    if (ec) throw url_error(text, "'" + url.host + "' is not an IPv6 address");
  } else {
    const auto colon = authority.find(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
    if (port_text.find(':') != std::string_view::npos) throw url_error(text, "an IPv6 address must be in brackets");
    if (!valid_host_name(url.host)) throw url_error(text, url.host.empty() ? "no host" : "'" + url.host + "' is not a host name");
  }
  if (!port_text.empty() || authority.find(':') != std::string_view::npos) {
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || value == 0 || value > 65535) {
      throw url_error(text, "port '" + std::string(port_text) + "' is not a number from 1 to 65535");
    }
    url.port = static_cast<unsigned short>(value);
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  url.base_path = std::string(path);
  return url;
}

struct Client::Impl {
  Url url;
  std::optional<std::string> token;
  std::chrono::milliseconds timeout;
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  bool connected = false;
  std::uint64_t opened = 0;

  [[nodiscard]] std::string where() const {
    return (url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host) + ":" + std::to_string(url.port);
  }

  // Runs one asynchronous operation to completion on this thread; the stream's expiry bounds it.
  template <class Initiate>
  error_code run(Initiate&& initiate) {
    error_code result = asio::error::would_block;
    initiate([&result](error_code ec, auto&&...) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }

  void disconnect() {
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.close();
    buffer.clear();
    connected = false;
  }

  // True when the server has closed (or reset) the idle connection, or sent something unasked.
  bool peer_gone() {
    if (buffer.size() != 0) return true;
    pollfd descriptor{stream.socket().native_handle(), POLLIN | POLLRDHUP, 0};
    return ::poll(&descriptor, 1, 0) != 0;
  }

  void connect() {
    tcp::resolver resolver(ioc);
    error_code ec;
    const auto endpoints = resolver.resolve(url.host, std::to_string(url.port), ec);
    if (ec) {
      throw HttpClientError(HttpClientError::Kind::connect,
                            "cannot connect to " + where() + ": cannot resolve '" + url.host + "': " + ec.message());
    }
    stream.expires_after(timeout);
    ec = run([&](auto handler) { stream.async_connect(endpoints, std::move(handler)); });
    if (ec) {
      disconnect();
      std::string why;
      if (ec == beast::error::timeout) why = "no answer within " + std::to_string(timeout.count()) + " ms";
      else if (ec == asio::error::connection_refused) why = "connection refused";
      else why = lowercase_first(ec.message());
      throw HttpClientError(HttpClientError::Kind::connect,
                            "cannot connect to " + where() + ": " + why + "; is `lethe serve` running?");
    }
    stream.socket().set_option(tcp::no_delay(true), ec);  // small requests, latency matters
    connected = true;
    ++opened;
  }

  // One request on the current connection. `retry` is set when it failed because the server had
  // closed a reused connection before answering.
  std::optional<Response> exchange(const bhttp::request<bhttp::string_body>& request, bool reused, bool& retry,
                                   std::string_view method, std::string_view target) {
    const auto fail = [&](const error_code& ec, bool got_some) -> std::optional<Response> {
      disconnect();
      const std::string what = std::string(method) + " " + std::string(target);
      if (ec == beast::error::timeout) {
        throw HttpClientError(HttpClientError::Kind::timeout, "no response from " + where() + " within " +
                                                                  std::to_string(timeout.count()) + " ms to " + what);
      }
      if (reused && !got_some && closed_by_peer(ec)) {
        retry = true;
        return std::nullopt;
      }
      throw HttpClientError(HttpClientError::Kind::transport,
                            what + " to " + where() + " failed: " + lowercase_first(ec.message()));
    };
    stream.expires_after(timeout);  // one deadline for sending the request and reading the response
    if (const error_code ec = run([&](auto handler) { bhttp::async_write(stream, request, std::move(handler)); })) {
      return fail(ec, false);
    }
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(kResponseBodyLimit);
    if (method == "HEAD") parser.skip(true);
    if (const error_code ec = run([&](auto handler) { bhttp::async_read(stream, buffer, parser, std::move(handler)); })) {
      return fail(ec, parser.got_some());
    }
    auto message = parser.release();
    Response response;
    response.status = static_cast<int>(message.result_int());
    response.content_type = std::string(message[bhttp::field::content_type]);
    for (const auto& field : message) response.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    response.body = std::move(message.body());
    if (!message.keep_alive()) disconnect();
    return response;
  }
};

Client::Client(Url url, std::optional<std::string> token, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  if (timeout.count() <= 0) throw std::invalid_argument("http::Client: the timeout must be positive");
  impl_->url = std::move(url);
  impl_->token = std::move(token);
  impl_->timeout = timeout;
}

Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

const Url& Client::url() const { return impl_->url; }
std::uint64_t Client::connections_opened() const { return impl_->opened; }

Response Client::request(std::string_view method, std::string_view target, std::string_view body) {
  return request(method, target, body, {});
}

Response Client::request(std::string_view method, std::string_view target, std::string_view body,
                         const std::vector<std::pair<std::string, std::string>>& headers) {
  Impl& s = *impl_;
  if (target.empty() || target.front() != '/') {
    throw std::invalid_argument("http::Client: request target '" + std::string(target) + "' must start with '/'");
  }
  bhttp::request<bhttp::string_body> request;
  const bhttp::verb verb = bhttp::string_to_verb({method.data(), method.size()});
  if (verb == bhttp::verb::unknown) request.method_string({method.data(), method.size()});
  else request.method(verb);
  request.target(s.url.base_path + std::string(target));
  request.version(11);
  request.set(bhttp::field::host, s.where());
  request.set(bhttp::field::user_agent, "lethe");
  if (s.token) request.set(bhttp::field::authorization, "Bearer " + *s.token);
  if (!body.empty()) request.set(bhttp::field::content_type, "application/json");
  for (const auto& [name, value] : headers) request.set(name, value);
  request.body() = std::string(body);
  request.keep_alive(true);
  request.prepare_payload();

  for (int attempt = 0;; ++attempt) {
    if (s.connected && s.peer_gone()) s.disconnect();
    const bool reused = s.connected;
    if (!s.connected) s.connect();
    bool retry = false;
    if (auto response = s.exchange(request, reused, retry, method, target)) return std::move(*response);
    // Only a reused connection gets here. A request that may not be repeated is not retried: the
    // server might have acted on it before the connection broke.
    if (attempt > 0 || !is_idempotent(method)) {
      throw HttpClientError(HttpClientError::Kind::transport,
                            std::string(method) + " " + std::string(target) + " to " + s.where() +
                                ": the server closed the connection before answering");
    }
  }
}

}  // namespace lethe::http
