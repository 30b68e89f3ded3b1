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
#include <string_view>
#include <thread>
#include <unordered_map>
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
  // A batch that fails for a transient reason (the disk full or failing: a storage::StorageError of
  // kind kNoSpace, kIo or kLocked) keeps its requests queued and is retried with exponential
  // backoff, retry_delay doubling up to max_retry_delay, for as long as the service runs. One that
  // fails otherwise (a damaged file, a refused input) is tried `attempts` times, retry_delay apart,
  // then its requests are marked failed with the error as the reason. run_until_idle() gives up
  // after `attempts` transient failures too, leaving the requests queued (DeletionsPending).
  int attempts = 3;
  std::chrono::milliseconds retry_delay{1000};
  std::chrono::milliseconds max_retry_delay{60000};
  // Health (Coordinator::metrics().problems): the other ranks are unresponsive once a heartbeat has
  // waited this long for them; a batch is stalled once it has run this long.
  std::chrono::milliseconds unresponsive_after{5000};
  std::chrono::milliseconds stalled_after{60000};
};

// The queue is at max_queue: nothing was written; the client should retry later.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// run_until_idle() stopped on a transient failure: the requests it names stay queued in the ledger
// and a later run (or the service) carries them out.
class DeletionsPending : public std::runtime_error {
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

// Why the service is not carrying out deletions as it should; each is a reason for /healthz to say
// "degraded". Messages name no path or internal detail (/healthz needs no token); the log has those.
enum class HealthProblem {
  kStorageFull,        // the last batch attempt found the disk full; retried with backoff
  kBatchFailing,       // the last batch attempt failed otherwise; retried (see the log)
  kRanksUnresponsive,  // a heartbeat has waited unresponsive_after for the other ranks
  kBatchStalled,       // the batch in progress has run stalled_after
  kAdoptionFailing,    // a trained retrain could not be adopted; retried every heartbeat (see the log)
};
[[nodiscard]] std::string_view to_string(HealthProblem problem);

struct CoordinatorMetrics {
  std::size_t queue_depth = 0;          // acknowledged, waiting for a batch
  std::uint64_t batches = 0;
  std::uint64_t completed = 0;          // requests completed since start
  std::uint64_t failed = 0;
  DurationSamples latency;              // submission to completed receipt, per request
  // Per phase of a batch: resolve, route:<name> (each route's prepare), commit (the manifest),
  // record_applied, purge, erase, complete (the ledger), scrub.
  std::map<std::string, DurationSamples> phases;
  std::string last_error;               // of the last failed batch attempt, "" when none (for the log and CLI)
  std::string last_error_kind;          // its kind: a storage::StorageErrorKind name ("no_space", "io") or "other"
  int consecutive_failures = 0;         // failed attempts of the current batch, 0 after a success
  double next_retry_seconds = 0;        // until the failed batch is tried again, 0 when none waits
  std::size_t batch_requests = 0;       // requests in the batch in progress, 0 when none runs
  double batch_seconds = 0;             // how long it has run
  double oldest_unfinished_seconds = 0; // age of the oldest acknowledged request not completed or failed
  int ranks = 1;                        // in the job's communicator
  double ranks_waiting_seconds = 0;     // how long the current heartbeat has waited for the other ranks
  std::vector<HealthProblem> problems;  // empty: healthy
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
  // Routes, purges, erases and receipts `ids` (already in the ledger); retries a failure that is not
  // transient, then fails the requests. False when it failed transiently (or could not record a
  // failure): the caller requeues the ids and retries after backoff().
  bool process(const std::vector<std::string>& ids);
  // Puts `ids` back at the head of the queue after a transient failure; the next attempt waits
  // retry_delay * 2^(failures-1), at most max_retry_delay.
  void requeue_after_failure(const std::vector<std::string>& ids);
  // Takes up to max_batch_requests queued ids as the batch in progress.
  std::vector<std::string> take_batch();
  // The batch in progress ended: its ids that the ledger completed or failed are no longer tracked.
  void end_batch(const std::vector<std::string>& ids);
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
  // Submission times of every acknowledged request not yet completed or failed (queued or in the
  // batch): the age of the oldest for health.
  std::unordered_map<std::string, std::int64_t> unfinished_ms_;
  std::size_t batch_requests_ = 0;
  std::chrono::steady_clock::time_point batch_started_{};
  std::chrono::steady_clock::time_point heartbeat_started_{};  // while a heartbeat waits; else epoch
  std::chrono::steady_clock::time_point retry_at_{};           // a requeued batch waits for this
  bool adoption_failing_ = false;
  bool batch_mode_ = false;  // run_until_idle(): give up on transient failures after `attempts`
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
