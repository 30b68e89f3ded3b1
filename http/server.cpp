#include "http/server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "http/auth.h"
#include "http/beast.h"

namespace lethe::http {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

std::optional<std::string_view> find_header(const std::vector<std::pair<std::string, std::string>>& headers,
                                            std::string_view name) {
  for (const auto& [key, value] : headers)
    if (iequals(key, name)) return std::string_view(value);
  return std::nullopt;
}

// Beast (Boost 1.74) has its own string_view.
std::string_view std_view(beast::string_view text) { return {text.data(), text.size()}; }

std::string endpoint_text(const tcp::endpoint& endpoint) {
  const auto address = endpoint.address();
  return (address.is_v6() ? "[" + address.to_string() + "]" : address.to_string()) + ":" +
         std::to_string(endpoint.port());
}

// Headers the server derives itself; a handler's value for them is ignored.
bool server_owned_header(std::string_view name) {
  return iequals(name, "Content-Length") || iequals(name, "Transfer-Encoding") || iequals(name, "Connection") ||
         iequals(name, "Content-Type");
}

bool is_http_parse_error(const error_code& ec) {
  return ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category();
}

// After a response that closes the connection, unread request bytes are read and dropped for at
// most this long (or this many bytes) so that closing does not reset the connection before the
// client has read the response (e.g. a 413 sent while the client is still sending its body).
constexpr std::chrono::milliseconds kLingerTime{1000};
constexpr std::size_t kLingerBytes = 16u << 20;
constexpr std::uint32_t kHeaderLimit = 16 * 1024;

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::optional<std::string_view> Request::header(std::string_view name) const { return find_header(headers, name); }
std::optional<std::string_view> Response::header(std::string_view name) const { return find_header(headers, name); }

Response json_response(int status, const nlohmann::json& body) {
  Response response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

Response json_error(int status, std::string_view code, std::string_view message, std::string_view field) {
  nlohmann::json error = {{"code", code}, {"message", message}};
  if (!field.empty()) error["field"] = field;
  return json_response(status, {{"error", std::move(error)}});
}

class Session;

struct Server::Impl {
  Impl(ServerOptions options_in, Handler handler_in)
      : options(std::move(options_in)), handler(std::move(handler_in)) {}

  ServerOptions options;
  Handler handler;

  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> accepted{0}, refused{0}, evicted{0}, requests{0}, timeouts{0};
  std::array<std::atomic<std::uint64_t>, 5> by_class{};

  std::mutex mutex;  // guards sessions and open; drained signals open reaching 0
  std::condition_variable drained;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
  std::uint64_t open = 0;

  std::mutex lifecycle;  // start()/stop()
  bool started = false;
  bool stopped = false;
  unsigned short bound_port = 0;

  // Declared after everything a session touches: destroyed first, and with it the sessions that
  // pending handlers still hold.
  asio::io_context ioc;
  asio::strand<asio::io_context::executor_type> accept_strand = asio::make_strand(ioc);
  tcp::acceptor acceptor{accept_strand};
  asio::steady_timer accept_retry{accept_strand};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;

  void count_response(int status) {
    requests.fetch_add(1, std::memory_order_relaxed);
    if (status >= 100 && status < 600) by_class[static_cast<std::size_t>(status / 100 - 1)].fetch_add(1, std::memory_order_relaxed);
  }
  [[nodiscard]] bool requires_token(std::string_view path) const {
    return options.bearer_token.has_value() &&
           std::find(options.public_paths.begin(), options.public_paths.end(), path) == options.public_paths.end();
  }
  std::vector<std::shared_ptr<Session>> live_sessions() {
    std::vector<std::shared_ptr<Session>> live;
    std::lock_guard lock(mutex);
    for (auto& [raw, weak] : sessions)
      if (auto session = weak.lock()) live.push_back(std::move(session));
    return live;
  }
  // At the connection limit: the session that has waited longest for a request header gives its
  // slot up. True when a slot was freed; `victim` is then the session the caller must close (null
  // when it was already being destroyed). False when every session has a request in progress.
  bool evict_idlest_locked(std::shared_ptr<Session>& victim);
  void do_accept();
  void on_accept(const error_code& ec, tcp::socket socket);
};

// One connection: reads requests one after another on its own strand, answers each, and closes
// on error, timeout, a response that asks for it, or the server stopping.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server::Impl& server, tcp::socket socket, bool counted)
      : server_(server), stream_(std::move(socket)), counted_(counted), idle_since_(counted ? steady_ns() : kBusy) {
    error_code ec;
    const auto peer = stream_.socket().remote_endpoint(ec);
    remote_ = ec ? "unknown" : endpoint_text(peer);
  }
  ~Session() {
    std::lock_guard lock(server_.mutex);
    server_.sessions.erase(this);
    if (counted_ && --server_.open == 0) server_.drained.notify_all();
  }

  [[nodiscard]] asio::any_io_executor executor() { return stream_.get_executor(); }

  // Any thread, under server_.mutex: since when (steady-clock ns) the session has waited for a
  // request header; negative while a request is in progress or once evicted.
  [[nodiscard]] std::int64_t idle_since() const { return idle_since_.load(); }
  // Under server_.mutex: takes the slot away if the session still waits since `since`; the caller
  // then posts close_now() to the session's strand.
  bool try_evict(std::int64_t since) {
    if (!idle_since_.compare_exchange_strong(since, kEvicted)) return false;
    counted_ = false;
    return true;
  }

  // On the session's strand.
  void run() {
    if (!counted_) {
      // Over the connection limit: answer at once, without waiting for the request.
      Response busy = json_error(503, "overloaded", "too many open connections; retry shortly");
      busy.headers.emplace_back("Retry-After", "1");
      send(std::move(busy), true, 11);
      return;
    }
    read_request();
  }

  // On the strand, when the server stops: a connection waiting for its next request is closed now.
  void server_stopping() {
    if (waiting_ && buffer_.size() == 0 && parser_ && !parser_->got_some()) close_now();
  }
  void close_now() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }
  // Only once no IO thread runs (after Server::stop joined them).
  void close_unsynchronized() { close_now(); }

 private:
  void read_request() {
    if (server_.stopping) return linger_close();
    // From here until the header is complete the connection is idle: a new one may take its slot.
    // A new connection is idle from its accept (the constructor), a kept-alive one from now.
    if (idle_since_.load() == kBusy) idle_since_.store(steady_ns());
    request_deadline_ = std::chrono::steady_clock::now() + server_.options.request_timeout;
    parser_.emplace();
    head_request_ = false;
    parser_->header_limit(kHeaderLimit);
    // The limit is checked after authentication (on_header). Not boost::none: Beast 1.74 compares
    // Content-Length against an empty optional as if it were 0.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    waiting_ = true;
    stream_.expires_after(std::min(server_.options.header_timeout, server_.options.request_timeout));
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  // Returns true when the read failed and the session has been dealt with.
  bool read_failed(const error_code& ec) {
    if (!ec) return false;
    if (ec == bhttp::error::end_of_stream) {
      close_now();  // the client closed between requests
    } else if (ec == beast::error::timeout) {
      // The stream closed the socket. Only a started request counts as a slow client; an idle
      // keep-alive connection simply expired.
      if (parser_->got_some()) {
        server_.timeouts.fetch_add(1, std::memory_order_relaxed);
        spdlog::debug("http: {}: request not complete in time (header within {} ms, all of it within {} ms), "
                      "connection closed",
                      remote_, server_.options.header_timeout.count(), server_.options.request_timeout.count());
      }
    } else if (ec == bhttp::error::body_limit) {
      send(json_error(413, "body_too_large",
                      "request body exceeds the limit of " + std::to_string(server_.options.body_limit) + " bytes"),
           true, 11);
    } else if (ec == bhttp::error::header_limit) {
      send(json_error(431, "headers_too_large",
                      "request headers exceed the limit of " + std::to_string(kHeaderLimit) + " bytes"),
           true, 11);
    } else if (is_http_parse_error(ec)) {
      send(json_error(400, "bad_request", "malformed HTTP request: " + ec.message()), true, 11);
    }
    // Anything else is a transport error (reset, aborted by stop()): nothing to answer.
    return true;
  }

  void on_header(error_code ec, std::size_t) {
    waiting_ = false;
    // Busy from now on, unless a new connection took the slot first: its close_now() is on the way.
    for (auto since = idle_since_.load(); since != kBusy;) {
      if (since == kEvicted) return;
      if (idle_since_.compare_exchange_weak(since, kBusy)) break;
    }
    if (read_failed(ec)) return;
    auto& request = parser_->get();
    const std::string_view target = std_view(request.target());
    const std::string_view path = target.substr(0, target.find('?'));
    // A body that will not be read leaves the connection unusable for another request.
    const bool body_pending = !parser_->is_done();

    if (target.empty() || target.front() != '/') {
      return send(json_error(400, "bad_request", "request target must be an absolute path such as /v1/models"), true,
                  request.version());
    }
    if (server_.requires_token(path) &&
        !bearer_matches(std_view(request[bhttp::field::authorization]), *server_.options.bearer_token)) {
      const bool sent_one = request.find(bhttp::field::authorization) != request.end();
      Response denied = json_error(401, "unauthorized",
                                   sent_one ? "wrong bearer token" : "missing bearer token: send `Authorization: Bearer <token>`");
      denied.headers.emplace_back("WWW-Authenticate", sent_one ? R"(Bearer error="invalid_token")" : "Bearer");
      return send(std::move(denied), body_pending, request.version());
    }
    const auto length = parser_->content_length();
    if (length && *length > server_.options.body_limit) {
      return send(json_error(413, "body_too_large",
                             "request body of " + std::to_string(*length) + " bytes exceeds the limit of " +
                                 std::to_string(server_.options.body_limit) + " bytes"),
                  true, request.version());
    }
    if (!body_pending) return handle();
    parser_->body_limit(server_.options.body_limit);  // no body byte parsed yet: allowed
    stream_.expires_at(request_deadline_);  // the body within what is left of the request timeout
    if (iequals(std_view(request[bhttp::field::expect]), "100-continue")) {
      // The client waits for this before sending its body (curl does for large bodies).
      auto interim = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, request.version());
      return bhttp::async_write(stream_, *interim,
                                [self = shared_from_this(), interim](error_code write_ec, std::size_t) {
                                  if (!write_ec) self->read_body();
                                });
    }
    read_body();
  }

  void read_body() {
    bhttp::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_body, shared_from_this()));
  }

  void on_body(error_code ec, std::size_t) {
    if (read_failed(ec)) return;
    handle();
  }

  void handle() {
    auto message = parser_->release();
    head_request_ = message.method() == bhttp::verb::head;
    Request request;
    request.method = std::string(message.method_string());
    const std::string_view target = std_view(message.target());
    const auto question = target.find('?');
    request.path = std::string(target.substr(0, question));
    if (question != std::string_view::npos) request.query = std::string(target.substr(question + 1));
    request.body = std::move(message.body());
    request.remote = remote_;
    for (const auto& field : message) request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));

    Response response;
    try {
      response = server_.handler(request);
    } catch (const std::exception& e) {
      spdlog::error("http: {} {} from {}: handler failed: {}", request.method, request.path, remote_, e.what());
      response = json_error(500, "internal", "internal server error; the server log has the details");
    } catch (...) {
      spdlog::error("http: {} {} from {}: handler threw a non-standard exception", request.method, request.path, remote_);
      response = json_error(500, "internal", "internal server error; the server log has the details");
    }
    send(std::move(response), !message.keep_alive(), message.version());
  }

  void send(Response response, bool close, unsigned version) {
    if (response.status < 100 || response.status > 599) {
      spdlog::error("http: handler returned status {}, not a valid HTTP status; answering 500", response.status);
      response = json_error(500, "internal", "internal server error; the server log has the details");
    }
    if (server_.stopping) close = true;
    response_ = {};
    response_.version(version);
    response_.result(static_cast<unsigned>(response.status));
    response_.set(bhttp::field::server, "lethe");
    response_.set(bhttp::field::content_type, response.content_type);
    for (const auto& [name, value] : response.headers)
      if (!server_owned_header(name)) response_.insert(name, value);
    response_.keep_alive(!close);
    if (head_request_) {
      // HEAD: the length of the body a GET would get, and no body.
      response_.content_length(response.body.size());
    } else {
      response_.body() = std::move(response.body);
      response_.prepare_payload();
    }
    server_.count_response(response.status);
    stream_.expires_after(server_.options.request_timeout);
    bhttp::async_write(stream_, response_,
                       [self = shared_from_this(), close](error_code ec, std::size_t) {
                         if (ec) return;  // the socket is closed with the session
                         if (close) return self->linger_close();
                         self->read_request();
                       });
  }

  void linger_close() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::min(kLingerTime, server_.options.request_timeout));
    discard_some();
  }
  void discard_some() {
    stream_.async_read_some(asio::buffer(discard_), [self = shared_from_this()](error_code ec, std::size_t n) {
      self->discarded_ += n;
      if (ec || self->discarded_ > kLingerBytes) return self->close_now();
      self->discard_some();
    });
  }

  Server::Impl& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::string_body> response_;  // alive while async_write runs
  std::string remote_;
  static constexpr std::int64_t kBusy = -1;
  static constexpr std::int64_t kEvicted = -2;

  bool counted_;           // holds one of max_connections; guarded by server_.mutex (try_evict clears it)
  std::atomic<std::int64_t> idle_since_;  // see idle_since()
  std::chrono::steady_clock::time_point request_deadline_;  // the whole current request by then
  bool waiting_ = false;   // reading the headers of a new request
  bool head_request_ = false;
  std::array<char, 8192> discard_{};
  std::size_t discarded_ = 0;
};

void Server::Impl::do_accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](const error_code& ec, tcp::socket socket) {
    on_accept(ec, std::move(socket));
  });
}

void Server::Impl::on_accept(const error_code& ec, tcp::socket socket) {
  if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
  if (ec) {
    spdlog::warn("http: accept failed: {}", ec.message());
    // Out of descriptors or memory: retrying at once would spin.
    accept_retry.expires_after(std::chrono::milliseconds(100));
    accept_retry.async_wait([this](const error_code& wait_ec) {
      if (!wait_ec) do_accept();
    });
    return;
  }
  if (stopping) {
    error_code ignored;
    socket.close(ignored);
    return;
  }
  accepted.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Session> session, victim;
  {
    // open only grows here, on the accept strand, so the limit cannot be overshot; an eviction
    // hands the victim's slot to the new session.
    std::lock_guard lock(mutex);
    bool counted = open < options.max_connections;
    if (counted) {
      ++open;
    } else if (evict_idlest_locked(victim)) {
      counted = true;
      evicted.fetch_add(1, std::memory_order_relaxed);
    } else {
      refused.fetch_add(1, std::memory_order_relaxed);
    }
    session = std::make_shared<Session>(*this, std::move(socket), counted);
    sessions.emplace(session.get(), session);
  }
  if (victim) {
    spdlog::debug("http: connection limit ({}) reached: closed the connection idle longest to admit a new one",
                  options.max_connections);
    asio::post(victim->executor(), [victim] { victim->close_now(); });
  }
  asio::dispatch(session->executor(), [session] { session->run(); });
  do_accept();
}

bool Server::Impl::evict_idlest_locked(std::shared_ptr<Session>& victim) {
  // A session whose destructor waits for the mutex is still in the map and its members still
  // valid: reading and marking it is safe; locking its weak_ptr fails.
  for (int attempt = 0; attempt < 4; ++attempt) {
    Session* idlest = nullptr;
    std::int64_t since = std::numeric_limits<std::int64_t>::max();
    for (const auto& [raw, weak] : sessions) {
      const auto t = raw->idle_since();
      if (t >= 0 && t < since) {
        since = t;
        idlest = raw;
      }
    }
    if (idlest == nullptr) return false;
    // It may have got its header meanwhile: then look again.
    if (!idlest->try_evict(since)) continue;
    victim = sessions.at(idlest).lock();  // null when already being destroyed: nothing to close
    return true;
  }
  return false;
}

Server::Server(ServerOptions options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {
  if (!impl_->handler) throw std::invalid_argument("http::Server: the handler is empty");
  if (impl_->options.threads < 1) throw std::invalid_argument("http::Server: threads must be at least 1");
  if (impl_->options.max_connections < 1) throw std::invalid_argument("http::Server: max_connections must be at least 1");
}

Server::~Server() {
  try {
    stop(std::chrono::milliseconds(0));
  } catch (const std::exception& e) {
    spdlog::error("http: stopping the server failed: {}", e.what());
  }
}

void Server::start() {
  Impl& s = *impl_;
  std::lock_guard lifecycle(s.lifecycle);
  if (s.started) throw std::logic_error("http::Server::start called twice");
  const std::string where = s.options.address + ":" + std::to_string(s.options.port);
  error_code ec;
  const auto address = asio::ip::make_address(s.options.address == "localhost" ? "127.0.0.1" : s.options.address, ec);
  if (ec) {
    throw ServerError("cannot listen on " + where + ": '" + s.options.address +
                      "' is not an IP address; use 127.0.0.1 (loopback only) or 0.0.0.0 (every interface)");
  }
  const tcp::endpoint endpoint(address, s.options.port);
  const auto fail = [&](const char* step) {
    std::string hint;
    if (ec == asio::error::address_in_use) hint = "; another process (another `lethe serve`?) listens there: stop it or pick another port";
    else if (ec == asio::error::access_denied) hint = "; ports below 1024 need privileges: pick a port above 1024";
    else if (ec == boost::system::errc::address_not_available) hint = "; the address is not one of this machine's: use 127.0.0.1 or 0.0.0.0";
    error_code ignored;
    s.acceptor.close(ignored);
    throw ServerError("cannot listen on " + endpoint_text(endpoint) + ": " + step + ": " + ec.message() + hint);
  };
  if (s.acceptor.open(endpoint.protocol(), ec)) fail("socket");
  // Lets a restarted server bind while old connections sit in TIME_WAIT; Linux still refuses a
  // port that another socket listens on.
  if (s.acceptor.set_option(asio::socket_base::reuse_address(true), ec)) fail("setsockopt");
  if (s.acceptor.bind(endpoint, ec)) fail("bind");
  if (s.acceptor.listen(asio::socket_base::max_listen_connections, ec)) fail("listen");
  s.bound_port = s.acceptor.local_endpoint().port();

  s.work.emplace(s.ioc.get_executor());
  asio::post(s.accept_strand, [&s] { s.do_accept(); });
  for (int i = 0; i < s.options.threads; ++i) {
    s.threads.emplace_back([&s] {
      for (;;) {
        try {
          s.ioc.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("http: IO thread: {}", e.what());
        }
      }
    });
  }
  s.started = true;
  spdlog::info("http: listening on {}", endpoint_text(tcp::endpoint(address, s.bound_port)));
}

unsigned short Server::port() const { return impl_->bound_port; }

void Server::stop(std::chrono::milliseconds drain) {
  Impl& s = *impl_;
  std::lock_guard lifecycle(s.lifecycle);
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.stopping = true;
  const auto deadline = std::chrono::steady_clock::now() + drain;

  // No new connections: close the listening socket on its strand.
  auto closed = std::make_shared<std::promise<void>>();
  auto acceptor_closed = closed->get_future();
  asio::post(s.accept_strand, [&s, closed] {
    error_code ignored;
    s.acceptor.close(ignored);
    s.accept_retry.cancel();
    closed->set_value();
  });
  // Idle keep-alive connections close now; the others close after their current response.
  for (auto& session : s.live_sessions()) asio::post(session->executor(), [session] { session->server_stopping(); });
  acceptor_closed.wait_until(deadline);
  {
    std::unique_lock lock(s.mutex);
    s.drained.wait_until(lock, deadline, [&s] { return s.open == 0; });
  }
  // Past the deadline: cut the rest off, and give their strands a moment to unwind.
  for (auto& session : s.live_sessions()) asio::post(session->executor(), [session] { session->close_now(); });
  {
    std::unique_lock lock(s.mutex);
    s.drained.wait_for(lock, std::chrono::milliseconds(200), [&s] { return s.open == 0; });
  }
  s.work.reset();
  s.ioc.stop();
  for (auto& thread : s.threads) thread.join();
  s.threads.clear();
  // No IO thread runs now: whatever is left is closed directly (its pending handlers are
  // destroyed with the io_context).
  error_code ignored;
  s.acceptor.close(ignored);
  for (auto& session : s.live_sessions()) session->close_unsynchronized();
  spdlog::info("http: stopped");
}

ServerStats Server::stats() const {
  const Impl& s = *impl_;
  ServerStats stats;
  stats.connections_accepted = s.accepted.load(std::memory_order_relaxed);
  stats.connections_refused = s.refused.load(std::memory_order_relaxed);
  stats.connections_evicted = s.evicted.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(impl_->mutex);
    stats.open_connections = s.open;
  }
  stats.requests = s.requests.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < stats.responses_by_class.size(); ++i)
    stats.responses_by_class[i] = s.by_class[i].load(std::memory_order_relaxed);
  stats.timeouts = s.timeouts.load(std::memory_order_relaxed);
  return stats;
}

}  // namespace lethe::http
