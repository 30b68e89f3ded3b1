#include "http/load.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>

namespace lethe::http {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kErrorSamples = 10;

double milliseconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

struct Arrival {
  std::string id;
  Clock::time_point scheduled;
};

// What the workers found, merged under one lock (a few hundred updates per second at most).
struct Results {
  std::mutex mutex;
  std::vector<double> submit_ms, latency_ms, from_arrival_ms;
  std::map<std::string, std::size_t> errors_by_kind;
  std::vector<std::string> error_samples;
  std::size_t errors = 0;
  Clock::time_point last_completion{};

  void error(const std::string& kind, const std::string& message) {
    std::lock_guard lock(mutex);
    ++errors;
    ++errors_by_kind[kind];
    // The first message of each kind: the same failure repeated tells nothing more.
    if (errors_by_kind[kind] == 1 && error_samples.size() < kErrorSamples) error_samples.push_back(kind + ": " + message);
  }
  void completed(double submit, double latency, double from_arrival, Clock::time_point at) {
    std::lock_guard lock(mutex);
    submit_ms.push_back(submit);
    latency_ms.push_back(latency);
    from_arrival_ms.push_back(from_arrival);
    last_completion = std::max(last_completion, at);
  }
};

std::string client_error_kind(const HttpClientError& e) {
  switch (e.kind()) {
    case HttpClientError::Kind::connect: return "connect";
    case HttpClientError::Kind::timeout: return "timeout";
    case HttpClientError::Kind::transport: return "transport";
  }
  return "transport";
}

// The start of a response body, on one line.
std::string snippet(const std::string& body) {
  std::string text = body.size() <= 200 ? body : body.substr(0, 200) + "...";
  std::replace_if(text.begin(), text.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return text;
}

// The receipt's "status", or nullopt (and an error recorded) when the answer is not a receipt.
std::optional<std::string> receipt_status(const nlohmann::json& body) {
  if (!body.is_object() || !body.contains("status") || !body["status"].is_string()) return std::nullopt;
  return body["status"].get<std::string>();
}

// One arrival: submit, then poll the receipt until it completes, fails or takes too long.
void serve_arrival(const LoadOptions& options, Client& client, const Arrival& arrival, Results& results) {
  const std::string body = render_template(options.body_template, arrival.id);
  const auto sent = Clock::now();
  try {
    Response response = client.request("POST", options.submit_path, body);
    const auto acknowledged = Clock::now();
    if (response.status != 202) {
      return results.error("http " + std::to_string(response.status),
                           "POST " + options.submit_path + " for " + arrival.id + ": " + snippet(response.body));
    }
    nlohmann::json receipt = nlohmann::json::parse(response.body, nullptr, false);
    if (receipt.is_discarded() || !receipt.contains("id") || !receipt_status(receipt)) {
      return results.error("bad response", "202 without {\"id\", \"status\"}: " + snippet(response.body));
    }
    const std::string request_id = receipt["id"].is_string() ? receipt["id"].get<std::string>() : receipt["id"].dump();
    const std::string receipt_path = options.submit_path + "/" + request_id;
    for (;;) {
      const std::string status = *receipt_status(receipt);
      if (status == "completed") {
        const auto done = Clock::now();
        return results.completed(milliseconds_between(sent, acknowledged), milliseconds_between(sent, done),
                                 milliseconds_between(arrival.scheduled, done), done);
      }
      if (status == "failed") {
        return results.error("receipt failed", request_id + ": " + snippet(receipt.dump()));
      }
      if (Clock::now() - sent > options.completion_timeout) {
        return results.error("completion timeout", request_id + " still '" + status + "' after " +
                                                       std::to_string(options.completion_timeout.count()) + " ms");
      }
      std::this_thread::sleep_for(options.poll_interval);
      response = client.request("GET", receipt_path);
      if (response.status != 200) {
        return results.error("poll http " + std::to_string(response.status),
                             "GET " + receipt_path + ": " + snippet(response.body));
      }
      receipt = nlohmann::json::parse(response.body, nullptr, false);
      if (receipt.is_discarded() || !receipt_status(receipt)) {
        return results.error("bad response", "GET " + receipt_path + " is not a receipt: " + snippet(response.body));
      }
    }
  } catch (const HttpClientError& e) {
    results.error(client_error_kind(e), e.what());
  }
}

}  // namespace

std::string render_template(std::string_view body_template, std::string_view id) {
  const std::string quoted = nlohmann::json(std::string(id)).dump();
  const std::string escaped = quoted.substr(1, quoted.size() - 2);
  std::string out;
  constexpr std::string_view kPlaceholder = "{id}";
  std::size_t from = 0;
  for (std::size_t at; (at = body_template.find(kPlaceholder, from)) != std::string_view::npos; from = at + kPlaceholder.size()) {
    out.append(body_template.substr(from, at - from)).append(escaped);
  }
  out.append(body_template.substr(from));
  return out;
}

LatencySummary summarize(std::vector<double> milliseconds) {
  LatencySummary summary;
  summary.count = milliseconds.size();
  if (milliseconds.empty()) return summary;
  std::sort(milliseconds.begin(), milliseconds.end());
  const auto rank = [&](double q) {
    // Nearest rank: the smallest sample with at least q of the samples at or below it.
    const auto index = static_cast<std::size_t>(std::ceil(q * static_cast<double>(milliseconds.size())));
    return milliseconds[std::clamp<std::size_t>(index, 1, milliseconds.size()) - 1];
  };
  summary.p50_ms = rank(0.50);
  summary.p90_ms = rank(0.90);
  summary.p99_ms = rank(0.99);
  summary.max_ms = milliseconds.back();
  summary.mean_ms = std::accumulate(milliseconds.begin(), milliseconds.end(), 0.0) / static_cast<double>(milliseconds.size());
  return summary;
}

LoadReport run_load(const LoadOptions& options) {
  if (!(options.rate > 0)) throw std::invalid_argument("load: the rate must be positive (requests per second)");
  if (options.duration.count() <= 0) throw std::invalid_argument("load: the duration must be positive");
  if (options.concurrency < 1) throw std::invalid_argument("load: the concurrency must be at least 1");
  if (options.ids.empty()) throw std::invalid_argument("load: no record ids to delete");
  if (options.body_template.find("{id}") == std::string::npos) {
    throw std::invalid_argument("load: the body template has no {id} placeholder");
  }
  if (options.request_timeout.count() <= 0) throw std::invalid_argument("load: the request timeout must be positive");
  if (options.poll_interval.count() < 0) throw std::invalid_argument("load: the poll interval must not be negative");

  std::mutex queue_mutex;
  std::condition_variable queue_ready;
  std::deque<Arrival> queue;
  bool arrivals_done = false;
  Results results;

  std::vector<std::thread> workers;
  for (int w = 0; w < options.concurrency; ++w) {
    workers.emplace_back([&] {
      Client client(options.url, options.token, options.request_timeout);
      for (;;) {
        Arrival arrival;
        {
          std::unique_lock lock(queue_mutex);
          queue_ready.wait(lock, [&] { return !queue.empty() || arrivals_done; });
          if (queue.empty()) return;
          arrival = std::move(queue.front());
          queue.pop_front();
        }
        serve_arrival(options, client, arrival, results);
      }
    });
  }

  // Open loop: arrivals follow their schedule whether or not earlier ones have been answered.
  LoadReport report;
  std::mt19937_64 random(options.seed);
  std::exponential_distribution<double> gap(options.rate);
  const auto start = Clock::now();
  const auto end = start + options.duration;
  auto next = start;
  for (std::size_t i = 0;; ++i) {
    next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(random)));
    if (next >= end) break;
    if (i == options.ids.size()) {
      report.ids_exhausted = true;
      break;
    }
    std::this_thread::sleep_until(next);
    {
      std::lock_guard lock(queue_mutex);
      queue.push_back({options.ids[i], next});
    }
    queue_ready.notify_one();
    ++report.arrivals;
  }
  const auto window_end = report.ids_exhausted ? Clock::now() : end;
  {
    std::lock_guard lock(queue_mutex);
    arrivals_done = true;
  }
  queue_ready.notify_all();
  for (auto& worker : workers) worker.join();

  report.completed = results.latency_ms.size();
  report.errors = results.errors;
  report.errors_by_kind = std::move(results.errors_by_kind);
  report.error_samples = std::move(results.error_samples);
  report.submit = summarize(std::move(results.submit_ms));
  report.latency = summarize(std::move(results.latency_ms));
  report.from_arrival = summarize(std::move(results.from_arrival_ms));
  const double window_s = std::chrono::duration<double>(window_end - start).count();
  report.offered_per_s = window_s > 0 ? static_cast<double>(report.arrivals) / window_s : 0;
  report.elapsed_s = std::chrono::duration<double>(std::max(window_end, results.last_completion) - start).count();
  report.throughput_per_s = report.elapsed_s > 0 ? static_cast<double>(report.completed) / report.elapsed_s : 0;
  return report;
}

nlohmann::json to_json(const LoadReport& report) {
  const auto summary = [](const LatencySummary& s) {
    return nlohmann::json{{"count", s.count}, {"p50_ms", s.p50_ms}, {"p90_ms", s.p90_ms},
                          {"p99_ms", s.p99_ms}, {"max_ms", s.max_ms}, {"mean_ms", s.mean_ms}};
  };
  return {{"arrivals", report.arrivals},
          {"completed", report.completed},
          {"errors", report.errors},
          {"errors_by_kind", report.errors_by_kind},
          {"error_samples", report.error_samples},
          {"submit", summary(report.submit)},
          {"latency", summary(report.latency)},
          {"from_arrival", summary(report.from_arrival)},
          {"offered_per_s", report.offered_per_s},
          {"throughput_per_s", report.throughput_per_s},
          {"elapsed_s", report.elapsed_s},
          {"ids_exhausted", report.ids_exhausted}};
}

}  // namespace lethe::http
