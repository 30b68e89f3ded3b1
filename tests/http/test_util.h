// tests/http/test_util.h — helpers for the HTTP suites: a server on an ephemeral loopback
// port, and a raw POSIX socket for sending malformed, partial or pipelined bytes.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "http/server.h"

namespace lethe::http::testing {

inline std::unique_ptr<Server> start_server(ServerOptions options, Handler handler) {
  options.address = "127.0.0.1";
  options.port = 0;
  auto server = std::make_unique<Server>(std::move(options), std::move(handler));
  server->start();
  return server;
}

inline std::string base_url(const Server& server) { return "http://127.0.0.1:" + std::to_string(server.port()); }

// A plain blocking TCP connection to 127.0.0.1:port, independent of the code under test.
class RawConnection {
 public:
  explicit RawConnection(unsigned short port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
      const int error = errno;
      ::close(fd_);
      fd_ = -1;
      errno = error;
      throw std::runtime_error(std::string("connect: ") + std::strerror(error));
    }
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // Reads until the peer closes (closed() turns true) or `limit` passes.
  std::string read_until_closed(std::chrono::milliseconds limit) { return read(limit, {}); }
  // Reads until `marker` has arrived, the peer closes, or `limit` passes.
  std::string read_until(std::string_view marker, std::chrono::milliseconds limit) { return read(limit, marker); }
  [[nodiscard]] bool closed() const { return closed_; }

 private:
  std::string read(std::chrono::milliseconds limit, std::string_view marker) {
    std::string received;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!closed_) {
      if (!marker.empty() && received.find(marker) != std::string::npos) break;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd descriptor{fd_, POLLIN, 0};
      if (::poll(&descriptor, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) closed_ = true;  // orderly close, or reset
      else received.append(chunk, static_cast<std::size_t>(n));
    }
    return received;
  }

  int fd_ = -1;
  bool closed_ = false;
};

}  // namespace lethe::http::testing
