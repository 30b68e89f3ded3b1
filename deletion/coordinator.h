// deletion/coordinator.h — rank 0's deletion pipeline: durable submission to the ledger, a queue
// batched in a short window, each batch routed (JobRouter), purged, erased and receipted; replay on start.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "deletion/job_router.h"
#include "deletion/request.h"
#include "storage/ledger.h"

namespace lethe::deletion {

struct CoordinatorOptions {
  // After the first request of a batch arrives, wait this long for more: a burst costs one plan.
  std::chrono::milliseconds batch_window{5};
  std::size_t max_batch_requests = 512;
  // Acknowledged requests not yet completed; beyond it submit() throws QueueFull (HTTP 429).
  std::size_t max_queue = 10000;
  // An idle rank 0 pings the other ranks this often, so that their collective timeout (comm/)
  // detects a dead or hung rank 0 instead of firing while nothing is asked of them.
  std::chrono::milliseconds heartbeat{1000};
  // A batch that fails (e.g. a full disk) is retried this many times, `retry_delay` apart, before
  // its requests are marked failed with the error as the reason.
  int attempts = 3;
  std::chrono::milliseconds retry_delay{1000};
};

// The queue is at max_queue: nothing was written; the client should retry later.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Submission {
  storage::LedgerRequest request;
  bool created = false;  // false: the idempotency key named an earlier request, which is returned
};

// Durations, in seconds: the most recent 4096 (for quantiles), and the sum and count of all.
struct DurationSamples {
  std::vector<double> recent;
  double sum = 0;
  std::uint64_t count = 0;
  void add(double seconds);
};

// Where a batch's time went, phase by phase ("resolve", "route:<name>", "commit", ...), in order.
using PhaseTimes = std::vector<std::pair<std::string, double>>;

struct CoordinatorMetrics {
  std::size_t queue_depth = 0;          // acknowledged, not yet completed
  std::uint64_t batches = 0;
  std::uint64_t completed = 0;          // requests completed since start
  std::uint64_t failed = 0;
  DurationSamples latency;              // submission to completed receipt, per request
  // Per phase of a batch: resolve, route:<name> (each route's prepare), commit (the manifest),
  // record_applied, purge, erase, complete (the ledger), scrub.
  std::map<std::string, DurationSamples> phases;
  std::string last_error;               // of the last failed batch attempt, "" when none
};

class Coordinator {
 public:
  // Rank 0. `router` and `ledger` must outlive the coordinator.
  Coordinator(JobRouter& router, storage::Ledger& ledger, comm::Communicator& comm, CoordinatorOptions options = {});
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Any thread. Writes the request to the ledger (durable on return), then queues it.
  // Throws QueueFull, storage::LedgerError (e.g. an idempotency key reused for another request).
  Submission submit(const DeletionRequest& request);

  // Starts the worker thread (the only thread of this rank that calls the communicator from then
  // on): it first replays the ledger's unfinished requests, then serves the queue.
  void start();
  // Lets the batch in progress finish, tells the other ranks to stop, joins. Requests still queued
  // stay acknowledged in the ledger and are replayed at the next start. Idempotent.
  void stop();
  // Batch mode (`lethe delete --job`), without start(): on the calling thread, replays and
  // completes every unfinished request, then tells the other ranks to stop.
  void run_until_idle();

  // Called on the worker thread after each batch (e.g. a retrain policy); set before start().
  void set_after_batch(std::function<void()> hook) { after_batch_ = std::move(hook); }

  // A request's receipt as stored, or built from its ledger row while it has none yet.
  [[nodiscard]] std::optional<nlohmann::json> receipt(const std::string& id) const;
  [[nodiscard]] CoordinatorMetrics metrics() const;

 private:
  void worker();
  void replay();
  // Routes, purges, erases and receipts `ids` (already in the ledger). Retries, then fails them.
  void process(const std::vector<std::string>& ids);
  void process_once(const std::vector<storage::LedgerRequest>& requests);
  void finish(const std::vector<storage::LedgerRequest>& requests, const std::vector<std::vector<ResolvedRecord>>& records,
              const BatchOutcome& outcome, PhaseTimes phases);
  void send_command(std::int64_t command);
  // Rank 0: what a retrain running now means for the records of a batch (its receipts' "retrain").
  [[nodiscard]] nlohmann::json retrain_effect() const;
  // Rank 0: adopts a trained retrain when one waits (trainer/job_retrain.h); false when none did.
  bool adopt_pending_retrain();

  JobRouter& router_;
  storage::Ledger& ledger_;
  comm::Communicator& comm_;
  CoordinatorOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  bool stopped_ = false;
  CoordinatorMetrics metrics_;
  static constexpr std::chrono::seconds kScrubInterval{1};
  std::chrono::steady_clock::time_point last_scrub_{};  // worker thread only
  std::function<void()> after_batch_;
  std::thread thread_;
};

// Ranks other than 0: runs rank 0's batches (the collective part of each route) until it says stop.
void follow_coordinator(JobRouter& router, comm::Communicator& comm);

// Unix milliseconds as ISO 8601 UTC ("2026-11-23T10:15:30.123Z"); null for 0.
[[nodiscard]] nlohmann::json iso_time(std::int64_t unix_ms);

}  // namespace lethe::deletion
