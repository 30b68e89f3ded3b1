// The load generator against a small in-test deletion service: every id used once, completed
// receipts timed, and every kind of failure counted rather than hidden.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <thread>

#include "http/load.h"
#include "tests/http/test_util.h"

namespace lethe::http {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// POST /v1/deletions {"records": [id]} -> 202 {"id", "status": "queued"}; the request completes
// `work` later (ids starting "bad" fail; every `reject_every`-th POST is answered 500).
class FakeService {
 public:
  explicit FakeService(std::chrono::milliseconds work, int reject_every = 0, bool never_complete = false)
      : work_(work), reject_every_(reject_every), never_complete_(never_complete) {
    server_ = testing::start_server({}, [this](const Request& request) { return handle(request); });
  }
  [[nodiscard]] Url url() const { return parse_url(testing::base_url(*server_)); }
  [[nodiscard]] std::vector<std::string> submitted() {
    std::lock_guard lock(mutex_);
    return submitted_;
  }
  [[nodiscard]] int rejected() {
    std::lock_guard lock(mutex_);
    return rejected_;
  }

 private:
  struct Entry {
    Clock::time_point done;
    bool fails;
  };

  Response handle(const Request& request) {
    std::lock_guard lock(mutex_);
    constexpr std::string_view kPrefix = "/v1/deletions/";
    if (request.method == "POST" && request.path == "/v1/deletions") {
      const auto body = nlohmann::json::parse(request.body);
      const std::string record = body.at("records").at(0);
      submitted_.push_back(record);
      if (reject_every_ > 0 && submitted_.size() % static_cast<std::size_t>(reject_every_) == 0) {
        ++rejected_;
        return json_error(500, "internal", "injected failure");
      }
      const std::string id = "req-" + std::to_string(submitted_.size());
      entries_[id] = {Clock::now() + work_, record.rfind("bad", 0) == 0};
      return json_response(202, {{"id", id}, {"status", "queued"}});
    }
    if (request.method == "GET" && request.path.rfind(kPrefix, 0) == 0) {
      const auto found = entries_.find(request.path.substr(kPrefix.size()));
      if (found == entries_.end()) return json_error(404, "not_found", "no such request");
      std::string status = "queued";
      if (!never_complete_ && Clock::now() >= found->second.done) status = found->second.fails ? "failed" : "completed";
      return json_response(200, {{"id", found->first}, {"status", status}});
    }
    return json_error(404, "not_found", "no such endpoint");
  }

  std::chrono::milliseconds work_;
  int reject_every_;
  bool never_complete_;
  std::mutex mutex_;
  std::vector<std::string> submitted_;
  std::map<std::string, Entry> entries_;
  int rejected_ = 0;
  std::unique_ptr<Server> server_;  // last: stopped before the state its handler uses goes away
};

std::vector<std::string> make_ids(int n, const std::string& prefix = "rec-") {
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) ids.push_back(prefix + std::to_string(i));
  return ids;
}

LoadOptions options_for(const FakeService& service, std::vector<std::string> ids) {
  LoadOptions options;
  options.url = service.url();
  options.rate = 200;
  options.duration = 500ms;
  options.ids = std::move(ids);
  options.concurrency = 4;
  options.poll_interval = 1ms;
  options.completion_timeout = 2s;
  return options;
}

TEST(HttpLoad, EveryArrivalCompletesOnceWithItsOwnId) {
  FakeService service(5ms);
  const LoadReport report = run_load(options_for(service, make_ids(1000)));
  // Poisson with mean 100 arrivals in the window.
  EXPECT_GT(report.arrivals, 50u);
  EXPECT_LT(report.arrivals, 160u);
  EXPECT_EQ(report.completed, report.arrivals);
  EXPECT_EQ(report.errors, 0u) << nlohmann::json(report.error_samples).dump();
  EXPECT_FALSE(report.ids_exhausted);
  // The first `arrivals` ids, each once.
  auto submitted = service.submitted();
  std::sort(submitted.begin(), submitted.end());
  auto expected = make_ids(static_cast<int>(report.arrivals));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(submitted, expected);
  // A request completes 5 ms after its acknowledgement, and is seen at the next poll.
  EXPECT_EQ(report.latency.count, report.completed);
  EXPECT_GE(report.latency.p50_ms, 5.0);
  EXPECT_LE(report.latency.p50_ms, report.latency.p90_ms);
  EXPECT_LE(report.latency.p90_ms, report.latency.p99_ms);
  EXPECT_LE(report.latency.p99_ms, report.latency.max_ms);
  EXPECT_LT(report.latency.max_ms, 2000.0);
  EXPECT_LE(report.submit.max_ms, report.latency.max_ms);
  EXPECT_GE(report.from_arrival.p50_ms, report.latency.p50_ms * 0.99);
  EXPECT_NEAR(report.offered_per_s, static_cast<double>(report.arrivals) / 0.5, 1e-6);
  EXPECT_GT(report.throughput_per_s, 0.5 * report.offered_per_s);
  const auto json = to_json(report);
  EXPECT_EQ(json["completed"], report.completed);
  EXPECT_EQ(json["latency"]["p99_ms"], report.latency.p99_ms);
}

TEST(HttpLoad, FailuresAreCountedByKind) {
  FakeService service(2ms, /*reject_every=*/4);
  std::vector<std::string> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back((i % 5 == 0 ? "bad-" : "ok-") + std::to_string(i));
  const LoadReport report = run_load(options_for(service, ids));
  ASSERT_GT(report.arrivals, 20u);
  const int rejected = service.rejected();
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(report.errors_by_kind.at("http 500"), static_cast<std::size_t>(rejected));
  // The "bad" ids that were accepted come back failed.
  std::size_t bad_accepted = 0;
  const auto submitted = service.submitted();
  for (std::size_t i = 0; i < submitted.size(); ++i)
    if (submitted[i].rfind("bad", 0) == 0 && (i + 1) % 4 != 0) ++bad_accepted;
  EXPECT_EQ(report.errors_by_kind.count("receipt failed") ? report.errors_by_kind.at("receipt failed") : 0u, bad_accepted);
  EXPECT_EQ(report.errors, static_cast<std::size_t>(rejected) + bad_accepted);
  EXPECT_EQ(report.completed + report.errors, report.arrivals);
  EXPECT_FALSE(report.error_samples.empty());
}

TEST(HttpLoad, StuckRequestsAndADeadServiceAreErrors) {
  {
    FakeService service(0ms, 0, /*never_complete=*/true);
    LoadOptions options = options_for(service, make_ids(1000));
    options.duration = 200ms;
    options.concurrency = 16;
    options.completion_timeout = 100ms;
    const LoadReport report = run_load(options);
    ASSERT_GT(report.arrivals, 0u);
    EXPECT_EQ(report.completed, 0u);
    EXPECT_EQ(report.errors_by_kind.at("completion timeout"), report.arrivals);
  }
  Url dead;
  {
    FakeService service(0ms);
    dead = service.url();
  }
  LoadOptions options;
  options.url = dead;
  options.rate = 100;
  options.duration = 200ms;
  options.ids = make_ids(100);
  options.concurrency = 2;
  const LoadReport report = run_load(options);
  ASSERT_GT(report.arrivals, 0u);
  EXPECT_EQ(report.completed, 0u);
  EXPECT_EQ(report.errors_by_kind.at("connect"), report.arrivals);
  ASSERT_FALSE(report.error_samples.empty());
  EXPECT_NE(report.error_samples[0].find("connection refused"), std::string::npos) << report.error_samples[0];
}

TEST(HttpLoad, StopsWhenTheIdsRunOut) {
  FakeService service(1ms);
  const LoadReport report = run_load(options_for(service, make_ids(5)));
  EXPECT_TRUE(report.ids_exhausted);
  EXPECT_EQ(report.arrivals, 5u);
  EXPECT_EQ(report.completed, 5u);
  EXPECT_EQ(service.submitted().size(), 5u);
}

TEST(HttpLoad, TemplateAndSummary) {
  EXPECT_EQ(render_template(R"({"records": ["{id}"], "idempotency_key": "k-{id}"})", "a\"b\\c"),
            R"({"records": ["a\"b\\c"], "idempotency_key": "k-a\"b\\c"})");
  EXPECT_EQ(nlohmann::json::parse(render_template(R"({"records": ["{id}"]})", "x\ny"))["records"][0], "x\ny");
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i);
  const LatencySummary s = summarize(samples);
  EXPECT_EQ(s.count, 100u);
  EXPECT_EQ(s.p50_ms, 50);
  EXPECT_EQ(s.p90_ms, 90);
  EXPECT_EQ(s.p99_ms, 99);
  EXPECT_EQ(s.max_ms, 100);
  EXPECT_DOUBLE_EQ(s.mean_ms, 50.5);
  EXPECT_EQ(summarize({}).count, 0u);
  LoadOptions bad;
  bad.ids = {"a"};
  bad.body_template = "{}";
  EXPECT_THROW((void)run_load(bad), std::invalid_argument);
}

}  // namespace
}  // namespace lethe::http
