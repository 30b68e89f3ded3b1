// http/load.h — open-loop load on the deletion service for its benchmark: Poisson arrivals at
// a fixed rate, each submitting one deletion and polling its receipt to completion; latencies and errors.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/client.h"

namespace lethe::http {

struct LoadOptions {
  Url url;
  std::optional<std::string> token;
  double rate = 100;                            // arrivals per second, exponential gaps
  std::chrono::milliseconds duration{10000};    // arrivals stop after this
  std::vector<std::string> ids;                 // record ids, each used by one arrival, in order
  std::string body_template = R"({"records": ["{id}"]})";  // every {id} becomes the JSON-escaped id
  std::string submit_path = "/v1/deletions";    // POST here; the receipt is GET submit_path/<id>
  int concurrency = 16;                         // worker threads, one keep-alive connection each
  std::chrono::milliseconds poll_interval{2};
  std::chrono::milliseconds request_timeout{5000};      // one HTTP exchange
  std::chrono::milliseconds completion_timeout{30000};  // submit to completed receipt
  std::uint64_t seed = 1;                       // of the arrival process
};

struct LatencySummary {
  std::size_t count = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;
};

struct LoadReport {
  std::size_t arrivals = 0;   // deletions submitted (or attempted)
  std::size_t completed = 0;  // with a completed receipt
  std::size_t errors = 0;     // every arrival that did not complete, whatever the reason
  // "http 429", "poll http 404", "timeout", "connect", "transport", "receipt failed",
  // "completion timeout", "bad response" -> count.
  std::map<std::string, std::size_t> errors_by_kind;
  std::vector<std::string> error_samples;  // the first message of each kind, "kind: message"
  LatencySummary submit;        // POST sent -> its 202 (the durable acknowledgement)
  LatencySummary latency;       // POST sent -> completed receipt seen
  LatencySummary from_arrival;  // scheduled arrival -> completed receipt: adds any wait for a free worker
  double offered_per_s = 0;     // arrivals / arrival window
  double throughput_per_s = 0;  // completed / (arrival window start .. last completion)
  double elapsed_s = 0;
  bool ids_exhausted = false;   // arrivals stopped early: the id list ran out
};

// The template with every "{id}" replaced by the id escaped for a JSON string.
[[nodiscard]] std::string render_template(std::string_view body_template, std::string_view id);
// Nearest-rank percentiles of the samples (milliseconds).
[[nodiscard]] LatencySummary summarize(std::vector<double> milliseconds);
// Runs the load; throws std::invalid_argument for unusable options. Errors of the service are
// counted in the report, never thrown.
[[nodiscard]] LoadReport run_load(const LoadOptions& options);
[[nodiscard]] nlohmann::json to_json(const LoadReport& report);

}  // namespace lethe::http
