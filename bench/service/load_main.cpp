// lethe_bench_load: open-loop load on a running `lethe serve` — Poisson arrivals of deletion requests,
// each polled to its completed receipt; prints latency percentiles, throughput and errors (table + JSON).
#include <atomic>
#include <cstdio>
#include <memory>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <string>

#include "http/auth.h"
#include "http/load.h"
#include "http/server.h"

namespace {

using lethe::http::LatencySummary;
using lethe::http::LoadOptions;
using lethe::http::LoadReport;

void usage() {
  std::cout <<
      R"(lethe_bench_load --url URL --ids FILE [options]

Submits deletions to a running `lethe serve` at Poisson arrival times (open loop: the schedule does
not wait for answers), polls each request's receipt until it is completed, and reports the latency
from sending the request to seeing the completed receipt.

  --url URL                 the service, e.g. http://127.0.0.1:8080 (required)
  --ids FILE                record ids, one per line, each deleted once, in order (required)
  --token-file FILE         bearer token (a file only its owner can read)
  --rate R                  arrivals per second (default 100)
  --duration S              seconds of arrivals (default 10)
  --concurrency N           worker threads, one keep-alive connection each (default 16)
  --poll-interval-ms MS     between receipt polls (default 2)
  --timeout-ms MS           per HTTP exchange (default 5000)
  --completion-timeout-ms MS  submit to completed receipt, else counted as an error (default 30000)
  --template JSON           request body, {id} replaced by the id (default {"records": ["{id}"]})
  --path PATH               submit path (default /v1/deletions; receipts at PATH/<request id>)
  --seed N                  of the arrival process (default 1)
  --json FILE               also write the report as JSON
  --baseline                instead of --url, an in-process lethe HTTP server that acknowledges each
                            deletion and reports it completed at the first poll: the floor that HTTP,
                            polling and this generator put under any measured latency

Exit status: 0 when every arrival completed, 1 when any failed or the ids ran out, 2 on bad usage.
)";
}

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "lethe_bench_load: " << message << " (see --help)\n";
  std::exit(2);
}

double parse_number(const std::string& option, const std::string& text, double minimum) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || !(value >= minimum)) {
    char bound[32];
    std::snprintf(bound, sizeof bound, "%g", minimum);
    usage_error(option + " '" + text + "': expected a number of at least " + bound);
  }
  return value;
}

std::vector<std::string> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) usage_error("--ids " + path + ": cannot be read");
  std::vector<std::string> ids;
  std::set<std::string> seen;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    const auto last = line.find_last_not_of(" \t\r");
    std::string id = line.substr(first, last - first + 1);
    if (!seen.insert(id).second) {
      usage_error("--ids " + path + ":" + std::to_string(number) + ": id '" + id + "' repeats; each id is deleted once");
    }
    ids.push_back(std::move(id));
  }
  if (ids.empty()) usage_error("--ids " + path + ": no ids in the file");
  return ids;
}

void print_row(const char* what, const LatencySummary& s) {
  if (s.count == 0) return (void)std::printf("%-14s %8d %9s %9s %9s %9s %9s\n", what, 0, "-", "-", "-", "-", "-");
  std::printf("%-14s %8zu %9.2f %9.2f %9.2f %9.2f %9.2f\n", what, s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms,
              s.mean_ms);
}

// --baseline: 202 {"id", "status": "queued"} for every submission, "completed" at the first poll.
std::unique_ptr<lethe::http::Server> start_baseline_server(const std::string& submit_path) {
  auto next_id = std::make_shared<std::atomic<std::uint64_t>>(0);
  lethe::http::ServerOptions server_options;
  server_options.port = 0;
  auto server = std::make_unique<lethe::http::Server>(server_options, [submit_path, next_id](const lethe::http::Request& request) {
    if (request.method == "POST" && request.path == submit_path) {
      return lethe::http::json_response(202, {{"id", std::to_string(++*next_id)}, {"status", "queued"}});
    }
    if (request.method == "GET" && request.path.rfind(submit_path + "/", 0) == 0) {
      return lethe::http::json_response(200, {{"id", request.path.substr(submit_path.size() + 1)}, {"status", "completed"}});
    }
    return lethe::http::json_error(404, "not_found", "no such endpoint");
  });
  server->start();
  return server;
}

}  // namespace

int main(int argc, char** argv) {
  LoadOptions options;
  std::string url, ids_path, token_path, json_path;
  bool baseline = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    const auto milliseconds = [&](const std::string& option) {
      return std::chrono::milliseconds(static_cast<long long>(parse_number(option, value(), 0)));
    };
    if (arg == "--url") url = value();
    else if (arg == "--ids") ids_path = value();
    else if (arg == "--token-file") token_path = value();
    else if (arg == "--rate") options.rate = parse_number(arg, value(), 1e-3);
    else if (arg == "--duration") options.duration = std::chrono::milliseconds(static_cast<long long>(parse_number(arg, value(), 1e-3) * 1000));
    else if (arg == "--concurrency") options.concurrency = static_cast<int>(parse_number(arg, value(), 1));
    else if (arg == "--poll-interval-ms") options.poll_interval = milliseconds(arg);
    else if (arg == "--timeout-ms") options.request_timeout = milliseconds(arg);
    else if (arg == "--completion-timeout-ms") options.completion_timeout = milliseconds(arg);
    else if (arg == "--template") options.body_template = value();
    else if (arg == "--path") options.submit_path = value();
    else if (arg == "--seed") options.seed = static_cast<std::uint64_t>(parse_number(arg, value(), 0));
    else if (arg == "--json") json_path = value();
    else if (arg == "--baseline") baseline = true;
    else if (arg == "--help" || arg == "-h") return usage(), 0;
    else usage_error("unknown argument '" + arg + "'");
  }
  if (url.empty() == !baseline) usage_error("give exactly one of --url and --baseline");
  if (ids_path.empty()) usage_error("--ids is required");
  try {
    std::unique_ptr<lethe::http::Server> baseline_server;
    if (baseline) {
      baseline_server = start_baseline_server(options.submit_path);
      url = "http://127.0.0.1:" + std::to_string(baseline_server->port());
    }
    options.url = lethe::http::parse_url(url);
    if (!token_path.empty()) options.token = lethe::http::load_token_file(token_path);
    options.ids = read_ids(ids_path);
    const double expected = options.rate * std::chrono::duration<double>(options.duration).count();
    if (static_cast<double>(options.ids.size()) < expected) {
      std::fprintf(stderr, "lethe_bench_load: warning: %zu ids for about %.0f arrivals; the run stops when they run out\n",
                   options.ids.size(), expected);
    }

    std::printf("# lethe_bench_load: %s, rate %.1f/s for %.1f s, %d connections, poll every %lld ms\n", url.c_str(),
                options.rate, std::chrono::duration<double>(options.duration).count(), options.concurrency,
                static_cast<long long>(options.poll_interval.count()));
    const LoadReport report = lethe::http::run_load(options);

    std::printf("%9s %10s %8s %10s %11s\n", "arrivals", "completed", "errors", "offered/s", "achieved/s");
    std::printf("%9zu %10zu %8zu %10.1f %11.1f\n", report.arrivals, report.completed, report.errors,
                report.offered_per_s, report.throughput_per_s);
    std::printf("%-14s %8s %9s %9s %9s %9s %9s\n", "latency", "count", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms");
    print_row("submit (202)", report.submit);
    print_row("completed", report.latency);
    print_row("from arrival", report.from_arrival);
    for (const auto& [kind, count] : report.errors_by_kind) std::printf("# errors: %-20s %zu\n", kind.c_str(), count);
    for (const auto& sample : report.error_samples) std::printf("#   e.g. %s\n", sample.c_str());
    if (report.ids_exhausted) {
      std::printf("# warning: the ids ran out after %zu arrivals; the offered rate is lower than asked\n", report.arrivals);
    }
    if (report.from_arrival.p99_ms > report.latency.p99_ms + 5 * std::max(1.0, static_cast<double>(options.poll_interval.count()))) {
      std::printf("# warning: arrivals waited for a free worker (from-arrival p99 %.2f ms vs %.2f ms): raise --concurrency\n",
                  report.from_arrival.p99_ms, report.latency.p99_ms);
    }

    if (!json_path.empty()) {
      nlohmann::json out = lethe::http::to_json(report);
      out["benchmark"] = "service_load";
      out["url"] = url;
      out["baseline"] = baseline;
      out["rate"] = options.rate;
      out["duration_s"] = std::chrono::duration<double>(options.duration).count();
      out["concurrency"] = options.concurrency;
      out["poll_interval_ms"] = options.poll_interval.count();
      out["template"] = options.body_template;
      out["seed"] = options.seed;
      std::ofstream file(json_path);
      file << out.dump(2) << '\n';
      if (!file) throw std::runtime_error("cannot write " + json_path);
    }
    return report.errors == 0 && !report.ids_exhausted ? 0 : 1;
  } catch (const std::invalid_argument& e) {
    usage_error(e.what());
  } catch (const std::exception& e) {
    std::cerr << "lethe_bench_load: error: " << e.what() << '\n';
    return 1;
  }
}
