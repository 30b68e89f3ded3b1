// The HTTP client: URL parsing, clear errors when nothing listens or the server is too slow, and
// reconnecting after the server closed an idle keep-alive connection.
#include <gtest/gtest.h>

#include <thread>

#include "http/client.h"
#include "tests/http/test_util.h"

namespace lethe::http {
namespace {

using namespace std::chrono_literals;
using testing::base_url;
using testing::start_server;

Response ok(const Request& request) {
  if (request.path == "/slow") std::this_thread::sleep_for(500ms);
  return json_response(200, {{"path", request.path}, {"method", request.method}});
}

TEST(ParseUrl, AcceptsHostPortAndPrefix) {
  Url url = parse_url("http://127.0.0.1:8080");
  EXPECT_EQ(url.host, "127.0.0.1");
  EXPECT_EQ(url.port, 8080);
  EXPECT_EQ(url.base_path, "");
  url = parse_url("HTTP://localhost:9000/lethe/api/");
  EXPECT_EQ(url.host, "localhost");
  EXPECT_EQ(url.port, 9000);
  EXPECT_EQ(url.base_path, "/lethe/api");
  url = parse_url("http://coordinator.example");
  EXPECT_EQ(url.port, 80);
  EXPECT_EQ(url.base_path, "");
  url = parse_url("http://[::1]:8081/");
  EXPECT_EQ(url.host, "::1");
  EXPECT_EQ(url.port, 8081);
}

TEST(ParseUrl, RefusesWithAReason) {
  const auto reason = [](std::string_view text) -> std::string {
    try {
      (void)parse_url(text);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_NE(reason("https://127.0.0.1:8080").find("https is not supported"), std::string::npos);
  EXPECT_NE(reason("127.0.0.1:8080").find("no scheme"), std::string::npos);
  EXPECT_NE(reason("ftp://host").find("unsupported scheme 'ftp'"), std::string::npos);
  EXPECT_NE(reason("http://127.0.0.1:0").find("port '0'"), std::string::npos);
  EXPECT_NE(reason("http://127.0.0.1:70000").find("port '70000'"), std::string::npos);
  EXPECT_NE(reason("http://127.0.0.1:80x").find("port '80x'"), std::string::npos);
  EXPECT_NE(reason("http://127.0.0.1:").find("port ''"), std::string::npos);
  EXPECT_NE(reason("http://").find("no host"), std::string::npos);
  EXPECT_NE(reason("http://user:pw@host").find("credentials"), std::string::npos);
  EXPECT_NE(reason("http://host/path?x=1").find("query"), std::string::npos);
  EXPECT_NE(reason("http://ho st").find("not a host name"), std::string::npos);
  EXPECT_NE(reason("http://::1:8080").find("brackets"), std::string::npos);
  EXPECT_NE(reason("http://[::1:8080").find("unterminated"), std::string::npos);
  // Every message shows the expected form.
  EXPECT_NE(reason("junk").find("http://127.0.0.1:8080"), std::string::npos);
}

TEST(HttpClient, ConnectionRefusedSaysSo) {
  unsigned short port = 0;
  {
    auto server = start_server({}, ok);
    port = server->port();
  }  // nothing listens there now
  Client client(parse_url("http://127.0.0.1:" + std::to_string(port)), std::nullopt, 2s);
  try {
    (void)client.request("GET", "/healthz");
    FAIL() << "connected to a closed port";
  } catch (const HttpClientError& e) {
    EXPECT_EQ(e.kind(), HttpClientError::Kind::connect);
    EXPECT_EQ(std::string(e.what()), "cannot connect to 127.0.0.1:" + std::to_string(port) +
                                         ": connection refused; is `lethe serve` running?");
  }
}

TEST(HttpClient, TimesOutAndRecovers) {
  auto server = start_server({}, ok);
  Client client(parse_url(base_url(*server)), std::nullopt, 150ms);
  const auto start = std::chrono::steady_clock::now();
  try {
    (void)client.request("GET", "/slow");
    FAIL() << "no timeout";
  } catch (const HttpClientError& e) {
    EXPECT_EQ(e.kind(), HttpClientError::Kind::timeout);
    EXPECT_NE(std::string(e.what()).find("within 150 ms to GET /slow"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 450ms);
  // The next request goes over a new connection.
  const Response response = client.request("GET", "/fast");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(client.connections_opened(), 2u);
}

TEST(HttpClient, ReconnectsAfterTheServerClosedAnIdleConnection) {
  ServerOptions options;
  options.request_timeout = 200ms;  // also the keep-alive idle limit
  auto server = start_server(options, ok);
  Client client(parse_url(base_url(*server) + "/prefix"), std::nullopt, 2s);
  ASSERT_EQ(client.request("GET", "/a").status, 200);
  std::this_thread::sleep_for(400ms);
  // POST is not retried blindly: the client notices the closed connection before sending.
  Response response = client.request("POST", "/b", "{}");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(nlohmann::json::parse(response.body)["path"], "/prefix/b");
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(client.request("GET", "/c").status, 200);
  EXPECT_EQ(client.connections_opened(), 3u);
  EXPECT_EQ(server->stats().timeouts, 0u) << "idle keep-alive connections are not slow clients";
}

TEST(HttpClient, ArbitraryMethodsAndEmptyBodies) {
  auto server = start_server({}, ok);
  Client client(parse_url(base_url(*server)), std::nullopt, 2s);
  EXPECT_EQ(nlohmann::json::parse(client.request("PURGE", "/x").body)["method"], "PURGE");
  EXPECT_EQ(nlohmann::json::parse(client.request("DELETE", "/x").body)["method"], "DELETE");
  const Response head = client.request("HEAD", "/x");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
  EXPECT_EQ(client.request("GET", "/after-head").status, 200);
  EXPECT_EQ(client.connections_opened(), 1u);
  EXPECT_THROW((void)client.request("GET", "no-slash"), std::invalid_argument);
}

}  // namespace
}  // namespace lethe::http
