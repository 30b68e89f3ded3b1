// The HTTP server on real loopback sockets: round trips, keep-alive, auth, limits, malformed and
// slow clients, handler failures, draining stop, bind errors and concurrent clients.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "http/client.h"
#include "http/server.h"
#include "tests/http/test_util.h"

namespace lethe::http {
namespace {

using namespace std::chrono_literals;
using testing::base_url;
using testing::RawConnection;
using testing::start_server;

// Answers with what it received, as JSON.
Response echo(const Request& request) {
  nlohmann::json body = {{"method", request.method}, {"path", request.path}, {"query", request.query},
                         {"body", request.body},     {"remote", request.remote}};
  if (auto value = request.header("x-lethe-test")) body["x_lethe_test"] = std::string(*value);
  return json_response(200, body);
}

Client client_for(const Server& server, std::optional<std::string> token = std::nullopt,
                  std::chrono::milliseconds timeout = 5s) {
  return Client(parse_url(base_url(server)), std::move(token), timeout);
}

TEST(HttpServer, RoundTripThroughTheClient) {
  auto server = start_server({}, [](const Request& request) {
    if (request.path == "/created") {
      Response response = json_response(201, {{"ok", true}});
      response.headers.emplace_back("Location", "/v1/deletions/7");
      return response;
    }
    return echo(request);
  });
  Client client = client_for(*server);
  Response response = client.request("POST", "/v1/echo?wait=1&x=2", R"({"records":["a"]})");
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(response.content_type, "application/json");
  const auto body = nlohmann::json::parse(response.body);
  EXPECT_EQ(body["method"], "POST");
  EXPECT_EQ(body["path"], "/v1/echo");
  EXPECT_EQ(body["query"], "wait=1&x=2");
  EXPECT_EQ(body["body"], R"({"records":["a"]})");
  EXPECT_EQ(body["remote"].get<std::string>().rfind("127.0.0.1:", 0), 0u) << body["remote"];
  ASSERT_TRUE(response.header("content-length"));
  EXPECT_EQ(std::string(*response.header("Content-Length")), std::to_string(response.body.size()));

  response = client.request("GET", "/created");
  EXPECT_EQ(response.status, 201);
  ASSERT_TRUE(response.header("location"));
  EXPECT_EQ(*response.header("location"), "/v1/deletions/7");
}

TEST(HttpServer, KeepAliveReusesOneConnection) {
  auto server = start_server({}, echo);
  Client client = client_for(*server);
  std::set<std::string> remotes;
  for (int i = 0; i < 20; ++i) {
    const Response response = client.request("GET", "/v1/models");
    ASSERT_EQ(response.status, 200);
    remotes.insert(nlohmann::json::parse(response.body)["remote"].get<std::string>());
  }
  EXPECT_EQ(remotes.size(), 1u);
  EXPECT_EQ(client.connections_opened(), 1u);
  EXPECT_EQ(server->stats().connections_accepted, 1u);
  EXPECT_EQ(server->stats().requests, 20u);
}

TEST(HttpServer, BearerTokenRequiredExceptOnPublicPaths) {
  std::atomic<int> handled{0};
  ServerOptions options;
  options.bearer_token = "s3cret-token";
  auto server = start_server(options, [&](const Request& request) {
    ++handled;
    return echo(request);
  });

  Client anonymous = client_for(*server);
  Response response = anonymous.request("GET", "/v1/models");
  EXPECT_EQ(response.status, 401);
  ASSERT_TRUE(response.header("WWW-Authenticate"));
  EXPECT_EQ(*response.header("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(nlohmann::json::parse(response.body)["error"]["code"], "unauthorized");
  EXPECT_EQ(anonymous.request("POST", "/v1/deletions", R"({"records":["x"]})").status, 401);

  Client wrong = client_for(*server, "s3cret-tokem");
  response = wrong.request("GET", "/v1/models");
  EXPECT_EQ(response.status, 401);
  ASSERT_TRUE(response.header("WWW-Authenticate"));
  EXPECT_NE(response.header("WWW-Authenticate")->find("invalid_token"), std::string_view::npos);
  EXPECT_EQ(client_for(*server, "s3cret-token-longer").request("GET", "/v1/models").status, 401);
  EXPECT_EQ(handled.load(), 0);

  EXPECT_EQ(anonymous.request("GET", "/healthz").status, 200);
  Client right = client_for(*server, "s3cret-token");
  EXPECT_EQ(right.request("GET", "/v1/models").status, 200);
  EXPECT_EQ(right.request("POST", "/v1/deletions", R"({"records":["x"]})").status, 200);
  EXPECT_EQ(handled.load(), 3);
}

TEST(HttpServer, OversizedBodyIs413AndTheServerGoesOn) {
  std::atomic<int> handled{0};
  ServerOptions options;
  options.body_limit = 1024;
  auto server = start_server(options, [&](const Request& request) {
    ++handled;
    return echo(request);
  });

  Client client = client_for(*server);
  Response response = client.request("POST", "/v1/deletions", std::string(1025, 'x'));
  EXPECT_EQ(response.status, 413);
  EXPECT_EQ(nlohmann::json::parse(response.body)["error"]["code"], "body_too_large");
  // Far beyond the limit: the 413 still reaches the client that is busy sending its body.
  response = client.request("POST", "/v1/deletions", std::string(8u << 20, 'y'));
  EXPECT_EQ(response.status, 413);
  EXPECT_EQ(handled.load(), 0);

  // Chunked bodies have no Content-Length: the limit applies as they arrive.
  RawConnection raw(server->port());
  const std::string chunk(1000, 'z');
  raw.send("POST /v1/deletions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
  raw.send("3e8\r\n" + chunk + "\r\n3e8\r\n" + chunk + "\r\n0\r\n\r\n");
  const std::string answer = raw.read_until_closed(5s);
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
  EXPECT_TRUE(raw.closed());
  EXPECT_EQ(handled.load(), 0);

  // Exactly at the limit is fine, on the same client (it reconnects) and on a new one.
  EXPECT_EQ(client.request("POST", "/v1/deletions", std::string(1024, 'x')).status, 200);
  EXPECT_EQ(client_for(*server).request("POST", "/v1/deletions", std::string(1024, 'x')).status, 200);
  EXPECT_EQ(handled.load(), 2);
}

TEST(HttpServer, MalformedHttpIs400AndClosed) {
  std::atomic<int> handled{0};
  auto server = start_server({}, [&](const Request& request) {
    ++handled;
    return echo(request);
  });
  for (const std::string garbage : {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost x\r\n\r\n",
                                    "GET / HTTP/9.7\r\nHost: x\r\n\r\n", "POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n"}) {
    RawConnection raw(server->port());
    raw.send(garbage);
    const std::string answer = raw.read_until_closed(5s);
    EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << garbage << " -> " << answer;
    EXPECT_NE(answer.find("malformed HTTP request"), std::string::npos) << answer;
    EXPECT_NE(answer.find("Content-Type: application/json"), std::string::npos) << answer;
    EXPECT_TRUE(raw.closed()) << garbage;
  }
  // A target that is not a path.
  RawConnection raw(server->port());
  raw.send("GET v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(raw.read_until_closed(5s).rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(handled.load(), 0);
  EXPECT_EQ(server->stats().responses_by_class[3], 5u);
}

TEST(HttpServer, SlowClientIsCutOffWhileOthersAreServed) {
  ServerOptions options;
  options.request_timeout = 400ms;
  auto server = start_server(options, echo);

  RawConnection slow(server->port());
  const auto start = std::chrono::steady_clock::now();
  slow.send("POST /v1/deletions HTTP/1.1\r\nHost: x\r\nContent-Le");  // and stalls

  // Meanwhile others are answered, on fresh and on kept-alive connections.
  Client client = client_for(*server);
  int served = 0;
  while (std::chrono::steady_clock::now() - start < 300ms) {
    ASSERT_EQ(client.request("GET", "/v1/models").status, 200);
    ASSERT_EQ(client_for(*server).request("GET", "/healthz").status, 200);
    ++served;
  }
  EXPECT_GT(served, 5);

  const std::string answer = slow.read_until_closed(3s);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(slow.closed()) << "the slow client was not cut off";
  EXPECT_GE(elapsed, 350ms);
  EXPECT_LE(elapsed, 1500ms);
  EXPECT_TRUE(answer.empty() || answer.rfind("HTTP/1.1 408", 0) == 0) << answer;
  for (int i = 0; i < 100 && server->stats().timeouts < 1; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server->stats().timeouts, 1u);

  // Same for a body that stops short of its Content-Length.
  RawConnection short_body(server->port());
  short_body.send("POST /v1/deletions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"records\":");
  (void)short_body.read_until_closed(3s);
  EXPECT_TRUE(short_body.closed());
  // Counted just after the socket closes, on the server's thread.
  for (int i = 0; i < 100 && server->stats().timeouts < 2; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server->stats().timeouts, 2u);
}

TEST(HttpServer, HandlerExceptionIs500WithAGenericMessage) {
  auto server = start_server({}, [](const Request& request) -> Response {
    if (request.path == "/boom") throw std::runtime_error("ledger at /secret/path is corrupt");
    if (request.path == "/bad-status") return Response{.status = 1000};
    return echo(request);
  });
  Client client = client_for(*server);
  Response response = client.request("GET", "/boom");
  EXPECT_EQ(response.status, 500);
  EXPECT_EQ(nlohmann::json::parse(response.body)["error"]["code"], "internal");
  EXPECT_EQ(response.body.find("secret"), std::string::npos) << response.body;
  EXPECT_EQ(client.request("GET", "/bad-status").status, 500);
  // The connection and the server are still fine.
  EXPECT_EQ(client.request("GET", "/v1/models").status, 200);
  EXPECT_EQ(client.connections_opened(), 1u);
  EXPECT_EQ(server->stats().responses_by_class[4], 2u);
}

TEST(HttpServer, StopDrainsInFlightRequestsThenRefusesConnections) {
  std::promise<void> entered;
  std::atomic<bool> entered_once{false};
  auto server = start_server({}, [&](const Request& request) {
    if (request.path == "/slow") {
      if (!entered_once.exchange(true)) entered.set_value();
      std::this_thread::sleep_for(500ms);
    }
    return echo(request);
  });
  const unsigned short port = server->port();
  // An idle keep-alive connection must not hold up the stop.
  Client idle = client_for(*server);
  ASSERT_EQ(idle.request("GET", "/v1/models").status, 200);

  auto in_flight = std::async(std::launch::async, [&] { return client_for(*server).request("POST", "/slow", "{}"); });
  entered.get_future().wait();
  const auto start = std::chrono::steady_clock::now();
  server->stop(5s);
  const auto took = std::chrono::steady_clock::now() - start;

  const Response response = in_flight.get();
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(nlohmann::json::parse(response.body)["path"], "/slow");
  ASSERT_TRUE(response.header("Connection"));
  EXPECT_EQ(*response.header("Connection"), "close");
  EXPECT_LT(took, 2s) << "stop waited for the idle connection instead of closing it";
  EXPECT_EQ(server->stats().open_connections, 0u);

  try {
    (void)idle.request("GET", "/v1/models");
    FAIL() << "the stopped server answered";
  } catch (const HttpClientError& e) {
    EXPECT_EQ(e.kind(), HttpClientError::Kind::connect) << e.what();
  }
  EXPECT_THROW(RawConnection{port}, std::runtime_error);
  server->stop(1s);  // idempotent
}

TEST(HttpServer, StopCutsOffAHandlerPastTheDrainDeadline) {
  auto server = start_server({}, [&](const Request& request) {
    if (request.path == "/slow") std::this_thread::sleep_for(600ms);
    return echo(request);
  });
  RawConnection raw(server->port());
  raw.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
  std::this_thread::sleep_for(100ms);
  const auto start = std::chrono::steady_clock::now();
  server->stop(50ms);
  // A running handler cannot be interrupted: stop returns once it has, and the socket is closed.
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  (void)raw.read_until_closed(2s);
  EXPECT_TRUE(raw.closed());
}

TEST(HttpServer, BindErrorsNameTheAddress) {
  auto first = start_server({}, echo);
  ServerOptions options;
  options.port = first->port();
  Server second(options, echo);
  try {
    second.start();
    FAIL() << "bound a port that is in use";
  } catch (const ServerError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("127.0.0.1:" + std::to_string(first->port())), std::string::npos) << message;
    EXPECT_NE(message.find("in use"), std::string::npos) << message;
  }
  ServerOptions bad;
  bad.address = "not-an-address";
  bad.port = 0;
  try {
    Server(bad, echo).start();
    FAIL() << "accepted a bad address";
  } catch (const ServerError& e) {
    EXPECT_NE(std::string(e.what()).find("'not-an-address' is not an IP address"), std::string::npos) << e.what();
  }
  // The first server is unaffected.
  EXPECT_EQ(client_for(*first).request("GET", "/healthz").status, 200);
}

TEST(HttpServer, ConcurrentClientsGetTheirOwnAnswers) {
  auto server = start_server({}, echo);
  constexpr int kThreads = 8, kRequests = 40;
  std::atomic<int> wrong{0}, right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Client client = client_for(*server);
      for (int i = 0; i < kRequests; ++i) {
        const std::string body = "thread " + std::to_string(t) + " request " + std::to_string(i);
        const Response response = client.request("POST", "/v1/echo/" + std::to_string(t), body);
        const auto json = nlohmann::json::parse(response.body);
        const bool ok = response.status == 200 && json["body"] == body && json["path"] == "/v1/echo/" + std::to_string(t);
        (ok ? right : wrong)++;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(right.load(), kThreads * kRequests);
  const ServerStats stats = server->stats();
  EXPECT_EQ(stats.connections_accepted, static_cast<std::uint64_t>(kThreads));
  EXPECT_EQ(stats.responses_by_class[1], static_cast<std::uint64_t>(kThreads * kRequests));
}

TEST(HttpServer, ConnectionLimitAnswers503WhenEveryConnectionHasARequestInProgress) {
  ServerOptions options;
  options.max_connections = 2;
  options.threads = 4;  // handlers run on the IO threads: two blocked ones must leave one to accept
  std::promise<void> release;
  const std::shared_future<void> released = release.get_future().share();
  std::atomic<int> blocked{0};
  auto server = start_server(options, [&](const Request& request) {
    if (request.path == "/block") {
      ++blocked;
      released.wait();
    }
    return echo(request);
  });
  auto first = std::async(std::launch::async, [&] { return client_for(*server).request("GET", "/block"); });
  auto second = std::async(std::launch::async, [&] { return client_for(*server).request("GET", "/block"); });
  for (int i = 0; i < 500 && blocked.load() < 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(blocked.load(), 2);

  // Both connections are busy: nothing can be evicted.
  const Response refused = client_for(*server).request("GET", "/healthz");
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(nlohmann::json::parse(refused.body)["error"]["code"], "overloaded");
  ASSERT_TRUE(refused.header("Retry-After"));
  EXPECT_EQ(*refused.header("Retry-After"), "1");
  EXPECT_EQ(server->stats().connections_refused, 1u);
  EXPECT_EQ(server->stats().connections_evicted, 0u);

  release.set_value();
  EXPECT_EQ(first.get().status, 200);
  EXPECT_EQ(second.get().status, 200);
  // Their clients are gone and so are their connections: a new client gets in.
  for (int i = 0; i < 500 && server->stats().open_connections >= 2; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(client_for(*server).request("GET", "/healthz").status, 200);
}

TEST(HttpServer, IdleConnectionsAtTheLimitAreEvictedToAdmitRealClients) {
  ServerOptions options;
  options.max_connections = 4;
  options.bearer_token = "s3cret-token";
  auto server = start_server(options, echo);
  // The attacker fills every slot: two connections that send nothing, two that stall mid-header.
  std::vector<std::unique_ptr<RawConnection>> attackers;
  for (int i = 0; i < 4; ++i) {
    attackers.push_back(std::make_unique<RawConnection>(server->port()));
    if (i % 2 == 1) attackers.back()->send("GET /v1/models HTTP/1.1\r\nHo");
  }
  for (int i = 0; i < 500 && server->stats().open_connections < 4; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(server->stats().open_connections, 4u);

  // /healthz without a token and the token holder are both served, again and again while the
  // attacker keeps reconnecting.
  Client anonymous = client_for(*server);
  Client holder = client_for(*server, "s3cret-token");
  for (int round = 0; round < 5; ++round) {
    EXPECT_EQ(anonymous.request("GET", "/healthz").status, 200) << "round " << round;
    const Response models = holder.request("GET", "/v1/models");
    EXPECT_EQ(models.status, 200) << "round " << round << ": " << models.body;
    attackers.push_back(std::make_unique<RawConnection>(server->port()));
    attackers.push_back(std::make_unique<RawConnection>(server->port()));
  }
  // The connections idle longest went first: the attacker's first four are closed.
  for (int i = 0; i < 4; ++i) {
    (void)attackers[static_cast<std::size_t>(i)]->read_until_closed(5s);
    EXPECT_TRUE(attackers[static_cast<std::size_t>(i)]->closed()) << "attacker " << i;
  }
  const ServerStats stats = server->stats();
  EXPECT_GE(stats.connections_evicted, 4u);
  EXPECT_EQ(stats.connections_refused, 0u);
  EXPECT_LE(stats.open_connections, 4u);
  EXPECT_EQ(stats.responses_by_class[1], 10u);
  EXPECT_EQ(stats.responses_by_class[4], 0u) << "no client was answered 503";
}

TEST(HttpServer, HeaderDeadlineIsSeparateFromTheRequestTimeout) {
  ServerOptions options;
  options.header_timeout = 200ms;
  options.request_timeout = 60s;
  auto server = start_server(options, echo);

  // Nothing sent, and a header that stalls: both closed at the header deadline, long before the
  // request timeout.
  RawConnection silent(server->port());
  RawConnection stalled(server->port());
  stalled.send("GET /v1/models HTTP/1.1\r\nHost: x\r\n");
  EXPECT_EQ(silent.read_until_closed(20s), "");
  EXPECT_TRUE(silent.closed());
  EXPECT_EQ(stalled.read_until_closed(20s), "");
  EXPECT_TRUE(stalled.closed());
  for (int i = 0; i < 100 && server->stats().timeouts < 1; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server->stats().timeouts, 1u) << "only the started request counts as a slow client";

  // A complete header, then a body that takes longer than the header deadline: the body has what
  // is left of the request timeout.
  RawConnection slow_body(server->port());
  slow_body.send("POST /v1/deletions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n");
  std::this_thread::sleep_for(500ms);
  slow_body.send("{}");
  const std::string answer = slow_body.read_until("}", 5s);
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
}

TEST(HttpServer, DefaultBodyLimitHoldsTheLargestJsonPredictBatch) {
  // docs/API.md: POST /v1/predict takes up to 1024 rows; Fashion-MNIST rows are 784 pixels.
  const nlohmann::json batch = {{"inputs", std::vector<std::vector<int>>(1024, std::vector<int>(784, 255))},
                                {"model", "noisy_gd"}};
  const std::string body = batch.dump();
  auto server = start_server({}, [](const Request& request) {
    return json_response(200, {{"bytes", request.body.size()}});
  });
  const Response response = client_for(*server, std::nullopt, 30s).request("POST", "/v1/predict", body);
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(nlohmann::json::parse(response.body)["bytes"], body.size());
}

TEST(HttpServer, BytesThatAreNotUtf8InAnErrorMessageAreReplacedNotA500) {
  const Response response = json_error(404, "not_found", "no such endpoint: /v1/\xff\xfe");
  EXPECT_EQ(response.status, 404);
  const auto body = nlohmann::json::parse(response.body);
  EXPECT_EQ(body["error"]["message"], "no such endpoint: /v1/\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(HttpServer, PipelinedRequestsAreAnsweredInOrder) {
  auto server = start_server({}, echo);
  RawConnection raw(server->port());
  raw.send("GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string answer = raw.read_until_closed(5s);
  const auto first = answer.find("\"/first\"");
  const auto second = answer.find("\"/second\"");
  ASSERT_NE(first, std::string::npos) << answer;
  ASSERT_NE(second, std::string::npos) << answer;
  EXPECT_LT(first, second);
  EXPECT_TRUE(raw.closed());
}

TEST(HttpServer, ExpectContinueAndHttp10) {
  auto server = start_server({}, echo);
  {
    RawConnection raw(server->port());
    raw.send("POST /v1/deletions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    EXPECT_EQ(raw.read_until("\r\n\r\n", 5s), "HTTP/1.1 100 Continue\r\n\r\n");
    raw.send("{}");
    EXPECT_EQ(raw.read_until("}", 5s).rfind("HTTP/1.1 200", 0), 0u);
  }
  {
    RawConnection raw(server->port());
    raw.send("GET /old HTTP/1.0\r\n\r\n");
    const std::string answer = raw.read_until_closed(5s);
    EXPECT_EQ(answer.rfind("HTTP/1.0 200", 0), 0u) << answer;
    EXPECT_TRUE(raw.closed());
  }
}

TEST(HttpServer, JsonErrorShape) {
  const Response error = json_error(400, "invalid_field", "must be a list of strings", "records[2]");
  EXPECT_EQ(error.status, 400);
  EXPECT_EQ(error.content_type, "application/json");
  EXPECT_EQ(nlohmann::json::parse(error.body),
            nlohmann::json::parse(R"({"error":{"code":"invalid_field","message":"must be a list of strings","field":"records[2]"}})"));
  EXPECT_FALSE(nlohmann::json::parse(json_error(404, "not_found", "no such request").body)["error"].contains("field"));
}

}  // namespace
}  // namespace lethe::http
