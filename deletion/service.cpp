#include "deletion/service.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <sstream>
#include <string_view>

#include <spdlog/spdlog.h>

#include "storage/error.h"
#include "trainer/error.h"

namespace lethe::deletion {

using nlohmann::json;

namespace {

constexpr std::string_view kDeletions = "/v1/deletions";
constexpr std::string_view kRetrains = "/v1/retrain";

http::Response method_not_allowed(std::string_view allowed) {
  auto response = http::json_error(405, "method_not_allowed", "use " + std::string(allowed) + " on this path");
  response.headers.emplace_back("Allow", std::string(allowed));
  return response;
}

json parse_body(const http::Request& request) { return parse_json_body(request.body); }

http::Response submit(Coordinator& coordinator, const http::Request& request) {
  const auto deletion = parse_deletion_request(parse_body(request));
  Submission submission;
  try {
    submission = coordinator.submit(deletion);
  } catch (const QueueFull& e) {
    auto response = http::json_error(429, "queue_full", e.what());
    response.headers.emplace_back("Retry-After", "1");
    return response;
  } catch (const storage::StorageError& e) {  // storage::LedgerError is one
    // The only client-caused ledger error: an idempotency key reused for another request.
    if (e.kind() == storage::StorageErrorKind::kIdempotencyConflict) {
      return http::json_error(409, "idempotency_key_reused", e.what(), "idempotency_key");
    }
    // A full disk passes once space is freed: nothing was recorded, the client retries. The
    // message names no path (the log has it).
    if (e.kind() == storage::StorageErrorKind::kNoSpace) {
      spdlog::error("POST /v1/deletions: the request was not recorded: {}", e.what());
      auto response = http::json_error(503, "storage_full",
                                       "the service's disk is full: this request was not recorded (nothing was queued); "
                                       "retry it after Retry-After seconds, once the operator has freed space");
      response.headers.emplace_back("Retry-After", "10");
      return response;
    }
    throw;
  }
  const auto& row = submission.request;
  auto response = http::json_response(submission.created ? 202 : 200,
                                      {{"id", row.id},
                                       {"status", storage::to_string(row.status)},
                                       {"created", submission.created},
                                       {"submitted_at", iso_time(row.submitted_ms)},
                                       {"receipt", std::string(kDeletions) + "/" + row.id}});
  response.headers.emplace_back("Location", std::string(kDeletions) + "/" + row.id);
  return response;
}

// At most this many rows per binary predict request (about 12 MiB of Fashion-MNIST pixels).
constexpr std::int64_t kMaxBinaryPredictRows = 16384;

// POST /v1/predict with Content-Type application/octet-stream: rows of the dataset's feature values
// back to back (X-Lethe-Dtype: uint8 or float32, little-endian; default the dataset's type), the
// model in X-Lethe-Model. Answers JSON as for a JSON body, or with Accept: application/octet-stream
// the probabilities as float32 [rows, classes] (X-Lethe-Classes, X-Lethe-Model, X-Lethe-Model-Version).
http::Response predict_binary(JobRouter& router, const http::Request& request) {
  std::string dtype(request.header("X-Lethe-Dtype").value_or(storage::to_string(router.feature_type())));
  if (dtype != "uint8" && dtype != "float32") {
    throw RequestError("X-Lethe-Dtype", "'" + dtype + "' is not a feature type; use uint8 or float32");
  }
  const auto type = storage::parse_feature_type(dtype);
  const auto width = router.values_per_record();
  const auto row_bytes = static_cast<std::size_t>(width) * storage::element_size(type);
  if (request.body.empty() || request.body.size() % row_bytes != 0) {
    throw RequestError("body", std::to_string(request.body.size()) + " bytes are not a whole number of rows of " +
                                   std::to_string(width) + " " + dtype + " values (" + std::to_string(row_bytes) +
                                   " bytes each)");
  }
  const auto rows = static_cast<std::int64_t>(request.body.size() / row_bytes);
  if (rows > kMaxBinaryPredictRows) {
    throw RequestError("body", std::to_string(rows) + " rows; at most " + std::to_string(kMaxBinaryPredictRows) +
                                   " per request");
  }
  auto values = torch::empty({rows, width}, type == storage::FeatureType::uint8 ? torch::kUInt8 : torch::kFloat32);
  std::memcpy(values.data_ptr(), request.body.data(), request.body.size());
  if (type == storage::FeatureType::float32) {
    // Rows of float32 values: each must be a feature value of the dataset (feature_value_problem).
    const auto* value = values.data_ptr<float>();
    for (std::int64_t i = 0; i < values.numel(); ++i) {
      if (auto problem = feature_value_problem(value[i], router.feature_type()); !problem.empty()) {
        throw RequestError("body", "row " + std::to_string(i / width) + ", value " + std::to_string(i % width) + " " + problem);
      }
    }
  }
  const auto prediction = router.predict_rows(std::string(request.header("X-Lethe-Model").value_or("")), values);
  const auto& p = prediction.probabilities;
  http::Response response;
  if (request.header("Accept").value_or("").find("application/octet-stream") != std::string_view::npos) {
    response.content_type = "application/octet-stream";
    response.body.assign(reinterpret_cast<const char*>(p.data_ptr<float>()), static_cast<std::size_t>(p.numel()) * sizeof(float));
    response.headers.emplace_back("X-Lethe-Classes", std::to_string(p.size(1)));
    response.headers.emplace_back("X-Lethe-Model", prediction.model);
    response.headers.emplace_back("X-Lethe-Model-Version", std::to_string(prediction.model_version));
    return response;
  }
  json predictions = json::array();
  const auto classes = p.argmax(1);
  const auto* best = classes.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* row = p.data_ptr<float>() + i * p.size(1);
    predictions.push_back({{"class", best[i]}, {"probabilities", std::vector<double>(row, row + p.size(1))}});
  }
  return http::json_response(200, {{"model", prediction.model},
                                    {"model_version", prediction.model_version},
                                    {"predictions", predictions}});
}

// What each health problem means for an operator; no path or error text: /healthz needs no token
// (the service log has the details).
std::string explain(HealthProblem problem, const CoordinatorMetrics& metrics) {
  const auto seconds = [](double s) { return fmt::format("{:.1f} s", s); };
  switch (problem) {
    case HealthProblem::kStorageFull:
      return "the disk is full: acknowledged requests are kept and their batch is retried with backoff (next in " +
             seconds(metrics.next_retry_seconds) + "); free space on the job's and the dataset's file systems";
    case HealthProblem::kBatchFailing:
      return "the last batch attempt failed (" + metrics.last_error_kind + ", " + std::to_string(metrics.consecutive_failures) +
             " in a row); it is retried; the service log has the error";
    case HealthProblem::kRanksUnresponsive:
      return "a heartbeat has waited " + seconds(metrics.ranks_waiting_seconds) + " for the other " +
             std::to_string(metrics.ranks - 1) + " rank(s): one is stopped or hung; the service exits at the "
             "communicator's timeout (LETHE_COMM_TIMEOUT_S), keeping every acknowledged request";
    case HealthProblem::kBatchStalled:
      return "the batch in progress (" + std::to_string(metrics.batch_requests) + " request(s)) has run " +
             seconds(metrics.batch_seconds) + ": a rank may be hung; see the service log";
    case HealthProblem::kAdoptionFailing:
      return "a trained retrain could not be adopted; it is retried every heartbeat; the service log has the error";
  }
  return "unknown";
}

// GET /healthz: 200 "ok", or 503 "degraded" with Retry-After and the problems, so that a load
// balancer or an orchestrator stops sending work while deletions are not being carried out.
http::Response health_response(const CoordinatorMetrics& metrics) {
  json problems = json::array();
  for (const auto problem : metrics.problems) {
    problems.push_back({{"code", to_string(problem)}, {"message", explain(problem, metrics)}});
  }
  json body = {{"status", problems.empty() ? "ok" : "degraded"},
               {"problems", problems},
               {"queue_depth", metrics.queue_depth},
               {"oldest_unfinished_seconds", metrics.oldest_unfinished_seconds},
               {"batch", metrics.batch_requests == 0
                             ? json(nullptr)
                             : json{{"requests", metrics.batch_requests}, {"running_seconds", metrics.batch_seconds}}},
               {"ranks", {{"count", metrics.ranks}, {"heartbeat_waiting_seconds", metrics.ranks_waiting_seconds}}},
               {"retry", metrics.consecutive_failures == 0
                             ? json(nullptr)
                             : json{{"failures", metrics.consecutive_failures},
                                    {"error_kind", metrics.last_error_kind},
                                    {"next_in_seconds", metrics.next_retry_seconds}}}};
  auto response = http::json_response(problems.empty() ? 200 : 503, body);
  if (!problems.empty()) {
    response.headers.emplace_back("Retry-After", std::to_string(std::max(1, static_cast<int>(metrics.next_retry_seconds + 0.999))));
  }
  return response;
}

// `name{labels,quantile="q"} value` for the median, p90 and p99 of `samples`.
void quantiles(std::ostringstream& out, const std::string& name, const std::string& labels, std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  for (const double q : {0.5, 0.9, 0.99}) {
    out << name << "{" << labels << (labels.empty() ? "" : ",") << "quantile=\"" << q << "\"} ";
    if (samples.empty()) {
      out << "NaN\n";
    } else {
      const auto index = static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1) + 0.5);
      out << samples[std::min(index, samples.size() - 1)] << "\n";
    }
  }
}

}  // namespace

std::string render_metrics(const CoordinatorMetrics& metrics, const JobRouter& router, const storage::Ledger& ledger,
                           const http::ServerStats& server) {
  std::ostringstream out;
  const auto gauge = [&out](const char* name, const char* help, auto value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n" << name << " " << value << "\n";
  };
  gauge("lethe_deletion_queue_depth", "Acknowledged deletion requests waiting for a batch.", metrics.queue_depth);
  gauge("lethe_deletion_oldest_unfinished_seconds", "Age of the oldest acknowledged request not completed or failed.",
        metrics.oldest_unfinished_seconds);
  gauge("lethe_deletion_batch_requests", "Requests in the batch in progress (0: none runs).", metrics.batch_requests);
  gauge("lethe_deletion_batch_running_seconds", "How long the batch in progress has run.", metrics.batch_seconds);
  gauge("lethe_deletion_batch_consecutive_failures", "Failed attempts of the current batch (0 after a success).",
        metrics.consecutive_failures);
  gauge("lethe_ranks_heartbeat_waiting_seconds", "How long the current heartbeat has waited for the other ranks.",
        metrics.ranks_waiting_seconds);
  out << "# HELP lethe_health_problem 1 for each reason /healthz says degraded.\n"
         "# TYPE lethe_health_problem gauge\n";
  for (const auto problem : metrics.problems) out << "lethe_health_problem{problem=\"" << to_string(problem) << "\"} 1\n";
  out << "# HELP lethe_deletion_requests Deletion requests in the ledger by status.\n"
         "# TYPE lethe_deletion_requests gauge\n";
  for (const auto& [status, count] : ledger.counts()) {
    out << "lethe_deletion_requests{status=\"" << storage::to_string(status) << "\"} " << count << "\n";
  }
  out << "# HELP lethe_deletions_completed_total Deletion requests completed by this process.\n"
         "# TYPE lethe_deletions_completed_total counter\n"
      << "lethe_deletions_completed_total " << metrics.completed << "\n"
      << "# HELP lethe_deletions_failed_total Deletion requests failed by this process.\n"
         "# TYPE lethe_deletions_failed_total counter\n"
      << "lethe_deletions_failed_total " << metrics.failed << "\n"
      << "# HELP lethe_deletion_batches_total Batches planned and applied by this process.\n"
         "# TYPE lethe_deletion_batches_total counter\n"
      << "lethe_deletion_batches_total " << metrics.batches << "\n";
  out << "# HELP lethe_deletion_latency_seconds Request to completed receipt, recent requests.\n"
         "# TYPE lethe_deletion_latency_seconds summary\n";
  quantiles(out, "lethe_deletion_latency_seconds", "", metrics.latency.recent);
  out << "lethe_deletion_latency_seconds_sum " << metrics.latency.sum << "\n"
      << "lethe_deletion_latency_seconds_count " << metrics.latency.count << "\n";
  out << "# HELP lethe_deletion_phase_seconds Time of each phase of a deletion batch, recent batches.\n"
         "# TYPE lethe_deletion_phase_seconds summary\n";
  for (const auto& [phase, samples] : metrics.phases) {
    const std::string label = "phase=\"" + phase + "\"";
    quantiles(out, "lethe_deletion_phase_seconds", label, samples.recent);
    out << "lethe_deletion_phase_seconds_sum{" << label << "} " << samples.sum << "\n"
        << "lethe_deletion_phase_seconds_count{" << label << "} " << samples.count << "\n";
  }
  out << "# HELP lethe_model_version The job's model version (one more per applied batch).\n"
         "# TYPE lethe_model_version gauge\n"
      << "lethe_model_version " << router.model_version() << "\n";
  std::string last_gauge;
  for (const auto& gauge : router.gauges()) {
    if (gauge.name != last_gauge) {
      out << "# HELP " << gauge.name << " " << gauge.help << "\n# TYPE " << gauge.name << " gauge\n";
      last_gauge = gauge.name;
    }
    out << gauge.name;
    for (std::size_t i = 0; i < gauge.labels.size(); ++i) {
      out << (i == 0 ? "{" : ",") << gauge.labels[i].first << "=\"" << gauge.labels[i].second << "\"";
    }
    out << (gauge.labels.empty() ? " " : "} ") << gauge.value << "\n";
  }
  out << "# HELP lethe_http_responses_total HTTP responses by status class.\n"
         "# TYPE lethe_http_responses_total counter\n";
  for (std::size_t c = 0; c < server.responses_by_class.size(); ++c) {
    out << "lethe_http_responses_total{class=\"" << c + 1 << "xx\"} " << server.responses_by_class[c] << "\n";
  }
  out << "# HELP lethe_http_open_connections Open client connections.\n"
         "# TYPE lethe_http_open_connections gauge\n"
      << "lethe_http_open_connections " << server.open_connections << "\n";
  out << "# HELP lethe_http_connections_evicted_total Connections waiting for a request header, closed at the connection limit to admit a new one.\n"
         "# TYPE lethe_http_connections_evicted_total counter\n"
      << "lethe_http_connections_evicted_total " << server.connections_evicted << "\n"
      << "# HELP lethe_http_connections_refused_total Connections answered 503 at the connection limit (every connection busy).\n"
         "# TYPE lethe_http_connections_refused_total counter\n"
      << "lethe_http_connections_refused_total " << server.connections_refused << "\n";
  return out.str();
}

void apply_retrain_policy(const JobRouter& router, RetrainLauncher& retrains) {
  const auto policy = router.settings().retrain;
  if (policy.live_shards_below <= 0 && policy.served_depth_below <= 0) return;
  for (const auto& need : router.retrain_needs()) {
    if (!need.needed) continue;
    const bool few = need.live < policy.live_shards_below;
    const bool shallow = need.strength < policy.served_depth_below;
    if (!few && !shallow) continue;
    if (retrains.busy()) return;
    try {
      (void)retrains.start(few ? "policy: " + std::to_string(need.live) + " of " + std::to_string(need.parts) + " parts live, below " +
                                     std::to_string(policy.live_shards_below)
                               : "policy: served strength " + std::to_string(need.strength) + " below " +
                                     std::to_string(policy.served_depth_below));
    } catch (const RetrainRunning&) {
    }
    return;
  }
}

http::Handler make_service_handler(Coordinator& coordinator, JobRouter& router, storage::Ledger& ledger,
                                   RetrainLauncher& retrains, ServerStatsSource server_stats) {
  return [&coordinator, &router, &ledger, &retrains, server_stats = std::move(server_stats)](const http::Request& request) -> http::Response {
    const auto& path = request.path;
    const auto& method = request.method;
    try {
      if (path == "/healthz") {
        if (method != "GET") return method_not_allowed("GET");
        return health_response(coordinator.metrics());
      }
      if (path == kDeletions) {
        if (method != "POST") return method_not_allowed("POST");
        return submit(coordinator, request);
      }
      if (path.size() > kDeletions.size() + 1 && path.compare(0, kDeletions.size() + 1, std::string(kDeletions) + "/") == 0) {
        if (method != "GET") return method_not_allowed("GET");
        const auto id = path.substr(kDeletions.size() + 1);
        std::optional<json> receipt;
        try {
          receipt = coordinator.receipt(id);
        } catch (const storage::StorageError& e) {
          if (e.kind() != storage::StorageErrorKind::kDamaged) throw;
          spdlog::error("GET {}: {}", path, e.what());
          return http::json_error(500, "ledger_damaged",
                                  "the ledger's record of this request is damaged (its receipt does not match its "
                                  "digest); the operator must restore the ledger from a backup (docs/OPERATIONS.md)");
        }
        if (!receipt) return http::json_error(404, "not_found", "no deletion request with id '" + id + "'");
        return http::json_response(200, *receipt);
      }
      if (path == kRetrains) {
        if (method != "POST") return method_not_allowed("POST");
        try {
          const auto id = retrains.start("POST /v1/retrain");
          auto response = http::json_response(202, {{"id", id}, {"status", "running"}, {"status_url", std::string(kRetrains) + "/" + id}});
          response.headers.emplace_back("Location", std::string(kRetrains) + "/" + id);
          return response;
        } catch (const RetrainRunning& e) {
          return http::json_error(409, "retrain_running", e.what());
        }
      }
      if (path.size() > kRetrains.size() + 1 && path.compare(0, kRetrains.size() + 1, std::string(kRetrains) + "/") == 0) {
        if (method != "GET") return method_not_allowed("GET");
        const auto id = path.substr(kRetrains.size() + 1);
        const auto status = retrains.status(id);
        if (!status) return http::json_error(404, "not_found", "no retrain with id '" + id + "'");
        return http::json_response(200, *status);
      }
      if (path == "/v1/models") {
        if (method != "GET") return method_not_allowed("GET");
        return http::json_response(200, router.models_json());
      }
      if (path == "/v1/predict") {
        if (method != "POST") return method_not_allowed("POST");
        if (request.header("Content-Type").value_or("").starts_with("application/octet-stream")) {
          return predict_binary(router, request);
        }
        return http::json_response(200, router.predict(parse_body(request)));
      }
      if (path == "/metrics") {
        if (method != "GET") return method_not_allowed("GET");
        http::Response response;
        response.content_type = "text/plain; version=0.0.4";
        response.body = render_metrics(coordinator.metrics(), router, ledger, server_stats());
        return response;
      }
      return http::json_error(404, "not_found", "no such endpoint: " + path + " (see docs/API.md)");
    } catch (const RequestError& e) {
      return http::json_error(400, "invalid_request", e.what(), e.field());
    } catch (const trainer::TrainerError& e) {
      if (e.kind() != trainer::ErrorKind::kUnavailable) throw;
      return http::json_error(503, "unavailable", e.what(), "model");
    }
  };
}

}  // namespace lethe::deletion
