#include "deletion/coordinator.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "storage/job_lock.h"
#include "trainer/error.h"


namespace lethe::deletion {

using nlohmann::json;

namespace {

// Rank 0's commands to the other ranks, one broadcast each.
enum Command : std::int64_t { kHeartbeat = 0, kBatch = 1, kStop = 3, kAdopt = 4 };

// Milliseconds since `start`, for the per-phase timings logged at debug level.
double elapsed_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

DeletionRequest request_of(const storage::LedgerRequest& row) {
  DeletionRequest request;
  request.records = row.record_ids;
  request.subject = row.subject;
  return request;
}

// The receipt's per-record part: salted hashes only, never the ids in clear; each route adds what
// it knows of a deleted record (e.g. its S3T shard and slice).
json records_part(const std::vector<ResolvedRecord>& records, const storage::Ledger& ledger, const JobRouter& router) {
  json out = json::array();
  for (const auto& record : records) {
    json entry = {{"id_hash", ledger.hash_id(record.id)}, {"outcome", to_string(record.outcome)}};
    if (record.outcome == RecordOutcome::kDelete) {
      router.describe_record(record.id, entry);
    } else {
      entry["reason"] = reason(record.outcome);
    }
    out.push_back(entry);
  }
  return out;
}

std::int64_t deleted_count(const std::vector<ResolvedRecord>& records) {
  return std::count_if(records.begin(), records.end(), [](const auto& r) { return r.outcome == RecordOutcome::kDelete; });
}

json request_part(const storage::LedgerRequest& row) {
  if (row.subject_hash) return {{"subject_hash", *row.subject_hash}};
  return {{"records", row.record_hashes.size()}};
}

// Whether a batch failure may go away by itself (space freed, a disk back): such a batch keeps its
// requests queued and is retried with backoff; any other failure fails them after a few attempts.
bool transient(const std::exception& error) {
  const auto* storage_error = dynamic_cast<const storage::StorageError*>(&error);
  if (storage_error == nullptr) return false;
  const auto kind = storage_error->kind();
  return kind == storage::StorageErrorKind::kNoSpace || kind == storage::StorageErrorKind::kIo ||
         kind == storage::StorageErrorKind::kLocked;
}

// Less than 1 MiB free for unprivileged writers on the file system holding `path`.
bool nearly_full(const std::filesystem::path& path) {
  struct statvfs info {};
  if (::statvfs(path.c_str(), &info) != 0) return false;
  return static_cast<double>(info.f_bavail) * static_cast<double>(info.f_frsize) < 1024.0 * 1024.0;
}

// The error's kind for health and metrics. HDF5 reports a full disk only as a failed write (kIo):
// an I/O error on a nearly full file system of the job or its dataset counts as no_space.
std::string kind_of(const std::exception& error, const JobRouter& router) {
  const auto* storage_error = dynamic_cast<const storage::StorageError*>(&error);
  if (storage_error == nullptr) return "other";
  if (storage_error->kind() == storage::StorageErrorKind::kIo &&
      (nearly_full(router.job_dir()) || nearly_full(router.dataset_path().parent_path()))) {
    return std::string(storage::to_string(storage::StorageErrorKind::kNoSpace));
  }
  return std::string(storage::to_string(storage_error->kind()));
}

double seconds_since(std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point now) {
  if (start == std::chrono::steady_clock::time_point{}) return 0;
  return std::chrono::duration<double>(now - start).count();
}

}  // namespace

std::string_view to_string(HealthProblem problem) {
  switch (problem) {
    case HealthProblem::kStorageFull: return "storage_full";
    case HealthProblem::kBatchFailing: return "batch_failing";
    case HealthProblem::kRanksUnresponsive: return "ranks_unresponsive";
    case HealthProblem::kBatchStalled: return "batch_stalled";
    case HealthProblem::kAdoptionFailing: return "adoption_failing";
  }
  return "unknown";
}

void DurationSamples::add(double seconds) {
  constexpr std::size_t kKeep = 4096;
  sum += seconds;
  ++count;
  recent.push_back(seconds);
  if (recent.size() > kKeep) recent.erase(recent.begin(), recent.end() - static_cast<std::ptrdiff_t>(kKeep));
}

json iso_time(std::int64_t unix_ms) {
  if (unix_ms <= 0) return nullptr;
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  char out[40];
  std::snprintf(out, sizeof out, "%s.%03lldZ", text, static_cast<long long>(unix_ms % 1000));
  return out;
}

Coordinator::Coordinator(JobRouter& router, storage::Ledger& ledger, comm::Communicator& comm, CoordinatorOptions options)
    : router_(router), ledger_(ledger), comm_(comm), options_(options) {
  if (comm.rank() != 0) throw std::logic_error("the coordinator runs on rank 0; other ranks call follow_coordinator");
}

Coordinator::~Coordinator() {
  try {
    stop();
  } catch (const std::exception& e) {
    spdlog::error("stopping the coordinator: {}", e.what());
  }
}

Submission Coordinator::submit(const DeletionRequest& request) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw QueueFull("the service is shutting down; retry against the restarted service");
    if (queue_.size() >= options_.max_queue) {
      throw QueueFull(std::to_string(queue_.size()) + " deletion requests are queued (limit " +
                      std::to_string(options_.max_queue) + "); retry shortly");
    }
  }
  auto result = ledger_.submit(request.records, request.subject, request.idempotency_key);
  if (result.created) {
    std::lock_guard lock(mutex_);
    queue_.push_back(result.request.id);
    unfinished_ms_[result.request.id] = result.request.submitted_ms;
    metrics_.queue_depth = queue_.size();
    wake_.notify_one();
  }
  return {std::move(result.request), result.created};
}

void Coordinator::start() {
  std::lock_guard lock(mutex_);
  if (thread_.joinable() || stopped_) throw std::logic_error("Coordinator::start: already started");
  thread_ = std::thread([this] { worker(); });
}

void Coordinator::stop() {
  bool started = false;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopping_ = true;
    started = thread_.joinable();
    wake_.notify_all();
  }
  if (started) {
    thread_.join();
  } else {
    send_command(kStop);  // never started: the other ranks still wait for rank 0's first command
  }
  std::lock_guard lock(mutex_);
  stopped_ = true;
}

void Coordinator::run_until_idle() {
  batch_mode_ = true;
  const auto stop_followers = [this] {
    send_command(kStop);
    std::lock_guard lock(mutex_);
    stopped_ = true;
  };
  try {
    adopt_pending_retrain();
    replay();
    for (int transient_failures = 0;;) {
      const auto batch = take_batch();
      if (batch.empty()) break;
      if (process(batch)) {
        transient_failures = 0;
        continue;
      }
      requeue_after_failure(batch);
      if (++transient_failures >= std::max(1, options_.attempts)) {
        std::lock_guard lock(mutex_);
        throw DeletionsPending(std::to_string(unfinished_ms_.size()) + " deletion request(s) are still queued after " +
                               std::to_string(transient_failures) + " failed attempts: " + metrics_.last_error +
                               "; they are kept in the ledger: fix the cause (free disk space?) and run this again, "
                               "or start `lethe serve`, which retries them with backoff");
      }
      std::unique_lock lock(mutex_);
      const auto wait = retry_at_ - std::chrono::steady_clock::now();
      lock.unlock();
      if (wait > wait.zero()) std::this_thread::sleep_for(wait);
    }
  } catch (const DeletionsPending&) {
    stop_followers();
    throw;
  }
  stop_followers();
}

std::vector<std::string> Coordinator::take_batch() {
  std::lock_guard lock(mutex_);
  std::vector<std::string> batch;
  while (!queue_.empty() && batch.size() < options_.max_batch_requests) {
    batch.push_back(queue_.front());
    queue_.pop_front();
  }
  metrics_.queue_depth = queue_.size();
  if (!batch.empty()) {
    batch_requests_ = batch.size();
    batch_started_ = std::chrono::steady_clock::now();
  }
  return batch;
}

void Coordinator::end_batch(const std::vector<std::string>& ids) {
  std::lock_guard lock(mutex_);
  batch_requests_ = 0;
  batch_started_ = {};
  for (const auto& id : ids) unfinished_ms_.erase(id);
}

void Coordinator::requeue_after_failure(const std::vector<std::string>& ids) {
  std::lock_guard lock(mutex_);
  batch_requests_ = 0;
  batch_started_ = {};
  for (auto it = ids.rbegin(); it != ids.rend(); ++it) queue_.push_front(*it);
  metrics_.queue_depth = queue_.size();
  const int doublings = std::clamp(metrics_.consecutive_failures - 1, 0, 20);
  const auto delay = std::min(options_.retry_delay * (std::int64_t{1} << doublings),
                              std::max(options_.retry_delay, options_.max_retry_delay));
  retry_at_ = std::chrono::steady_clock::now() + delay;
  spdlog::warn("coordinator: {} request(s) stay queued; next attempt in {} ms (failure {} in a row)", unfinished_ms_.size(),
               delay.count(), metrics_.consecutive_failures);
}

void Coordinator::send_command(std::int64_t command) {
  if (command == kHeartbeat) {
    // Every collective waits for all ranks to arrive (comm/): a heartbeat that waits long means a
    // rank is stopped or hung, which health reports long before the communicator's timeout.
    {
      std::lock_guard lock(mutex_);
      heartbeat_started_ = std::chrono::steady_clock::now();
    }
    comm_.broadcast({&command, 1, comm::DataType::kInt64}, 0);
    std::lock_guard lock(mutex_);
    heartbeat_started_ = {};
    return;
  }
  comm_.broadcast({&command, 1, comm::DataType::kInt64}, 0);
}

void Coordinator::worker() {
  try {
    replay();
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        // Ready: stopping, or requests queued and no failed batch waiting out its backoff.
        const auto ready = [this] {
          return stopping_ || (!queue_.empty() && std::chrono::steady_clock::now() >= retry_at_);
        };
        auto deadline = std::chrono::steady_clock::now() + options_.heartbeat;
        if (!queue_.empty()) deadline = std::min(deadline, std::max(retry_at_, std::chrono::steady_clock::now()));
        if (!wake_.wait_until(lock, deadline, ready)) {
          lock.unlock();
          if (!adopt_pending_retrain()) send_command(kHeartbeat);
          continue;
        }
        if (stopping_) break;
        // The batching window: a burst arriving now costs one plan.
        wake_.wait_for(lock, options_.batch_window,
                       [this] { return stopping_ || queue_.size() >= options_.max_batch_requests; });
      }
      const auto batch = take_batch();
      if (!process(batch)) requeue_after_failure(batch);
      adopt_pending_retrain();
      if (after_batch_) after_batch_();
    }
    try {
      ledger_.scrub();  // requests completed since the last scrub leave no clear id behind
    } catch (const storage::StorageError& e) {
      // E.g. a full disk: the next start scrubs after its first batch; the other ranks must still stop.
      spdlog::error("coordinator: the ledger scrub at stop failed ({}); it runs again after the next batch", e.what());
    }
    send_command(kStop);
  } catch (const std::exception& e) {
    // Only a communicator failure gets here (process() contains the rest): the ranks can no longer
    // work together, so the process must end; the ledger keeps every acknowledged request.
    spdlog::critical("coordinator: {}; exiting so that the job can be restarted (acknowledged requests are kept)", e.what());
    std::_Exit(3);
  }
}

bool Coordinator::adopt_pending_retrain() {
  std::optional<trainer::RetrainRun> run;
  try {
    run = router_.pending_retrain();
  } catch (const std::exception& e) {
    spdlog::error("coordinator: reading the job's retrains: {}", e.what());
    return false;
  }
  if (!run) return false;
  send_command(kAdopt);
  try {
    const auto version = router_.adopt_retrain(&*run);
    std::lock_guard lock(mutex_);
    adoption_failing_ = false;
    spdlog::info("coordinator: retrain {} adopted without stopping the service (model version {})", run->id, version);
  } catch (const comm::CommError&) {
    throw;
  } catch (const trainer::TrainerError& e) {
    // It cannot ever be adopted (stale, or made for another config or dataset): say so once.
    spdlog::error("coordinator: retrain {} cannot be adopted: {}", run->id, e.what());
    run->status = trainer::RetrainStatus::kFailed;
    run->error = std::string("not adopted: ") + e.what();
    try {
      trainer::write_retrain_run(router_.job_dir(), *run);
    } catch (const std::exception& again) {
      spdlog::error("coordinator: cannot record it: {}", again.what());
    }
  } catch (const std::exception& e) {
    spdlog::error("coordinator: adopting retrain {} failed (retried each heartbeat): {}", run->id, e.what());
    std::lock_guard lock(mutex_);
    adoption_failing_ = true;
  }
  return true;
}

json Coordinator::retrain_effect() const {
  json running = json::array();
  std::optional<std::string> starting;  // a retrain holding its lock that has not recorded itself yet
  try {
    const auto retrains = router_.retrains();  // named: a range-for over a temporary's member dangles
    for (const auto& run : retrains.at("in_progress")) running.push_back(run.at("id"));
    if (running.empty()) starting = storage::JobLock::holder(router_.job_dir(), storage::JobLock::Kind::kRetrain);
  } catch (const std::exception& e) {
    // The receipt must not fail for this: it says what is known.
    spdlog::error("coordinator: reading the job's retrains for a receipt: {}", e.what());
    return {{"in_progress", nullptr}, {"effect", std::string("unknown: the job's retrain records could not be read: ") + e.what()}};
  }
  if (starting) {
    return {{"in_progress", json::array()},
            {"starting", *starting},
            {"effect", "a retrain is starting (" + *starting + "): if it read the job before this deletion, the models "
                       "it trains forget the record through their route (S3T: slice deactivation) before they are served"}};
  }
  if (running.empty()) {
    return {{"in_progress", json::array()},
            {"effect", "no retrain is running: a later one starts after this record is erased and never reads it"}};
  }
  return {{"in_progress", running},
          {"effect", "retrain " + running[0].get<std::string>() +
                         " started before this deletion and may have read the record; the models it trained forget "
                         "it through their route (S3T: slice deactivation) before they are served"}};
}

void Coordinator::replay() {
  const auto unfinished = ledger_.unfinished();
  if (unfinished.empty()) return;
  spdlog::info("coordinator: replaying {} acknowledged request(s) not completed before the last stop", unfinished.size());
  // A batch committed to the manifest but not completed (there is at most one: the last) finishes first.
  std::vector<std::string> rest;
  for (const auto& row : unfinished) {
    if (!router_.committed_batch_of(row.id)) rest.push_back(row.id);
  }
  std::vector<std::string> committed;
  for (const auto& row : unfinished) {
    if (router_.committed_batch_of(row.id)) committed.push_back(row.id);
  }
  {
    std::lock_guard lock(mutex_);
    for (const auto& row : unfinished) unfinished_ms_.emplace(row.id, row.submitted_ms);
    // Requests submitted before the replay (batch mode) are already queued.
    const std::unordered_set<std::string> queued(queue_.begin(), queue_.end());
    for (auto it = rest.rbegin(); it != rest.rend(); ++it) {
      if (queued.count(*it) == 0) queue_.push_front(*it);
    }
    metrics_.queue_depth = queue_.size();
  }
  if (!committed.empty()) {
    {
      std::lock_guard lock(mutex_);
      batch_requests_ = committed.size();
      batch_started_ = std::chrono::steady_clock::now();
    }
    // A committed batch must finish before any other is planned: on a transient failure it is
    // retried here (heartbeats keep the other ranks' timeouts quiet) rather than queued behind.
    for (int failures = 1; !process(committed); ++failures) {
      requeue_after_failure({});
      if (batch_mode_ && failures >= std::max(1, options_.attempts)) {
        throw DeletionsPending("a committed batch of " + std::to_string(committed.size()) +
                               " request(s) could not be finished after " + std::to_string(failures) +
                               " attempts; they are kept in the ledger: fix the cause (free disk space?) and run "
                               "this again, or start `lethe serve`, which retries them with backoff");
      }
      bool stop = false;
      {
        std::unique_lock lock(mutex_);
        wake_.wait_until(lock, retry_at_, [this] { return stopping_; });
        stop = stopping_;
      }
      if (stop) return;
      send_command(kHeartbeat);
    }
  }
}

bool Coordinator::process(const std::vector<std::string>& ids) {
  std::string error;
  for (int attempt = 1;; ++attempt) {
    std::vector<storage::LedgerRequest> requests;
    std::unordered_set<std::string> seen;
    for (const auto& id : ids) {
      if (!seen.insert(id).second) continue;
      auto row = ledger_.get(id);
      if (row && (row->status == storage::RequestStatus::kQueued || row->status == storage::RequestStatus::kApplied)) {
        requests.push_back(std::move(*row));
      }
    }
    if (requests.empty()) {
      end_batch(ids);
      return true;
    }
    try {
      process_once(requests);
      {
        std::lock_guard lock(mutex_);
        metrics_.last_error.clear();
        metrics_.last_error_kind.clear();
        metrics_.consecutive_failures = 0;
        retry_at_ = {};
      }
      end_batch(ids);
      return true;
    } catch (const comm::CommError&) {
      throw;  // the ranks are out of step: not retryable in this process
    } catch (const std::exception& e) {
      error = e.what();
      const bool retry_later = transient(e);
      const auto kind = kind_of(e, router_);
      {
        std::lock_guard lock(mutex_);
        metrics_.last_error = error;
        metrics_.last_error_kind = kind;
        ++metrics_.consecutive_failures;
      }
      if (retry_later) {
        spdlog::error("coordinator: batch of {} request(s) failed ({}; retried with backoff): {}", requests.size(), kind,
                      error);
        return false;
      }
      spdlog::error("coordinator: batch of {} request(s), attempt {} of {}: {}", requests.size(), attempt,
                    std::max(1, options_.attempts), error);
      if (attempt >= std::max(1, options_.attempts)) break;
      std::this_thread::sleep_for(options_.retry_delay);
    }
  }
  // Not transient and still failing: each request is failed with the error as its reason. One whose
  // failure cannot be recorded stays queued (false: retried later), never silently dropped.
  bool recorded = true;
  for (const auto& id : ids) {
    try {
      auto row = ledger_.get(id);
      if (!row || row->status == storage::RequestStatus::kCompleted || row->status == storage::RequestStatus::kFailed) continue;
      json receipt = row->receipt.is_object() ? row->receipt : json{{"id", id}, {"request", request_part(*row)}};
      receipt["status"] = "failed";
      receipt["error"] = error;
      receipt["failed_at"] = iso_time(now_ms());
      ledger_.fail(id, error, receipt);
      std::lock_guard lock(mutex_);
      ++metrics_.failed;
    } catch (const std::exception& e) {
      spdlog::error("coordinator: cannot record request {} as failed ({}); it stays queued and is retried", id, e.what());
      recorded = false;
    }
  }
  if (!recorded) return false;
  {
    std::lock_guard lock(mutex_);
    metrics_.consecutive_failures = 0;
    retry_at_ = {};
  }
  end_batch(ids);
  return true;
}

void Coordinator::process_once(const std::vector<storage::LedgerRequest>& requests) {
  // Requests whose batch the manifest already holds (a restart) only need finishing.
  if (const auto committed = router_.committed_batch_of(requests.front().id)) {
    // The routes loaded that batch's state from the manifest; only its files are left to finish.
    std::vector<std::vector<ResolvedRecord>> records;
    for (const auto& row : requests) records.push_back(router_.resolve(request_of(row)));
    finish(requests, records, *committed, {});
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  PhaseTimes phases;
  std::vector<std::vector<ResolvedRecord>> records;
  std::vector<ResolvedRecord> batch;
  std::unordered_set<std::string> seen;
  std::vector<std::string> request_ids;
  for (const auto& row : requests) {
    records.push_back(router_.resolve(request_of(row)));
    request_ids.push_back(row.id);
    for (const auto& record : records.back()) {
      if (record.outcome == RecordOutcome::kDelete && seen.insert(record.id).second) batch.push_back(record);
    }
  }
  phases.emplace_back("resolve", elapsed_ms(start) / 1000.0);
  send_command(kBatch);
  const auto outcome = router_.apply_batch(batch, request_ids, &phases);
  finish(requests, records, outcome, std::move(phases));
}

void Coordinator::finish(const std::vector<storage::LedgerRequest>& requests,
                         const std::vector<std::vector<ResolvedRecord>>& records, const BatchOutcome& outcome,
                         PhaseTimes phases) {
  auto lap_start = std::chrono::steady_clock::now();
  const auto lap = [&](const char* phase) {
    const auto now = std::chrono::steady_clock::now();
    phases.emplace_back(phase, std::chrono::duration<double>(now - lap_start).count());
    lap_start = now;
  };
  const auto applied_ms = now_ms();
  std::vector<json> receipts;
  std::vector<std::pair<std::string, json>> newly_applied;
  std::vector<std::string> erase;
  std::unordered_set<std::string> seen;
  const auto retrain = retrain_effect();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto& row = requests[i];
    // A request applied before a restart keeps the record outcomes it was applied with (its records
    // may since have been erased, which a fresh resolution would report as "already erased").
    const bool reapplied = row.status == storage::RequestStatus::kApplied && row.receipt.contains("records");
    json per_record = reapplied ? row.receipt["records"] : records_part(records[i], ledger_, router_);
    // Counted from the typed outcomes when they were resolved (applied before a restart: as stored).
    const json erased = reapplied ? row.receipt.value("records_erased", json(nullptr)) : json(deleted_count(records[i]));
    for (const auto& record : records[i]) {
      if (record.outcome == RecordOutcome::kDelete && seen.insert(record.id).second) erase.push_back(record.id);
    }
    json receipt = {{"id", row.id},
                    {"status", "applied"},
                    {"submitted_at", iso_time(row.submitted_ms)},
                    {"applied_at", iso_time(row.applied_ms > 0 ? row.applied_ms : applied_ms)},
                    {"completed_at", nullptr},
                    {"request", request_part(row)},
                    {"records", per_record},
                    {"batch", {{"requests", outcome.request_ids.size()}, {"records_deleted", outcome.records_deleted}}},
                    {"models", outcome.models},
                    {"model_version", outcome.model_version},
                    {"records_erased", erased},
                    {"retrain", retrain}};
    if (row.status == storage::RequestStatus::kQueued) newly_applied.emplace_back(row.id, receipt);
    receipts.push_back(std::move(receipt));
  }
  ledger_.mark_applied(newly_applied);
  lap("record_applied");
  router_.purge(outcome.purge);
  lap("purge");
  std::int64_t erased_now = 0;
  if (!erase.empty()) erased_now = router_.erase(erase);
  lap("erase");
  const auto completed_ms = now_ms();
  std::vector<double> latencies;
  std::vector<std::pair<std::string, json>> completed;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto& receipt = receipts[i];
    receipt["status"] = "completed";
    receipt["completed_at"] = iso_time(completed_ms);
    completed.emplace_back(requests[i].id, std::move(receipt));
    latencies.push_back(static_cast<double>(completed_ms - requests[i].submitted_ms) / 1000.0);
  }
  ledger_.complete(completed);
  lap("complete");
  // The clear ids of completed requests linger in the ledger's WAL until a scrub: scrub when the
  // queue is empty, and at least every kScrubInterval under sustained load (a scrub costs fsyncs
  // that would otherwise add to every batch's latency).
  bool idle = false;
  {
    std::lock_guard lock(mutex_);
    idle = queue_.empty();
  }
  const auto now = std::chrono::steady_clock::now();
  if (idle || now - last_scrub_ >= kScrubInterval) {
    ledger_.scrub();
    last_scrub_ = now;
    lap("scrub");
  }
  if (spdlog::should_log(spdlog::level::debug)) {
    std::string text;
    for (const auto& [phase, seconds] : phases) text += fmt::format(" {} {:.1f} ms,", phase, seconds * 1000);
    spdlog::debug("coordinator: batch phases:{}", text);
  }
  spdlog::info("coordinator: batch of {} request(s) completed: {} record(s) forgotten, {} erased now, {} checkpoint(s) purged, model version {}",
               requests.size(), outcome.records_deleted, erased_now, outcome.purge.size(), outcome.model_version);
  std::lock_guard lock(mutex_);
  ++metrics_.batches;
  metrics_.completed += requests.size();
  for (const auto latency : latencies) metrics_.latency.add(latency);
  for (const auto& [phase, seconds] : phases) metrics_.phases[phase].add(seconds);
  metrics_.queue_depth = queue_.size();
}

std::optional<json> Coordinator::receipt(const std::string& id) const {
  const auto row = ledger_.get(id);
  if (!row) return std::nullopt;
  if (row->receipt.is_object()) return row->receipt;
  return json{{"id", row->id},
              {"status", to_string(row->status)},
              {"submitted_at", iso_time(row->submitted_ms)},
              {"request", request_part(*row)},
              {"error", row->error.empty() ? json(nullptr) : json(row->error)}};
}

CoordinatorMetrics Coordinator::metrics() const {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  auto out = metrics_;
  out.queue_depth = queue_.size();
  out.ranks = comm_.size();
  out.batch_requests = batch_requests_;
  out.batch_seconds = seconds_since(batch_started_, now);
  out.ranks_waiting_seconds = seconds_since(heartbeat_started_, now);
  if (metrics_.consecutive_failures > 0 && retry_at_ > now) {
    out.next_retry_seconds = std::chrono::duration<double>(retry_at_ - now).count();
  }
  std::int64_t oldest = 0;
  for (const auto& [id, submitted] : unfinished_ms_) {
    if (oldest == 0 || submitted < oldest) oldest = submitted;
  }
  if (oldest > 0) out.oldest_unfinished_seconds = std::max(0.0, static_cast<double>(now_ms() - oldest) / 1000.0);
  if (adoption_failing_) out.problems.push_back(HealthProblem::kAdoptionFailing);
  if (metrics_.consecutive_failures > 0) {
    out.problems.push_back(metrics_.last_error_kind == storage::to_string(storage::StorageErrorKind::kNoSpace)
                               ? HealthProblem::kStorageFull
                               : HealthProblem::kBatchFailing);
  }
  if (out.ranks_waiting_seconds * 1000 >= static_cast<double>(options_.unresponsive_after.count())) {
    out.problems.push_back(HealthProblem::kRanksUnresponsive);
  }
  if (out.batch_seconds * 1000 >= static_cast<double>(options_.stalled_after.count())) {
    out.problems.push_back(HealthProblem::kBatchStalled);
  }
  return out;
}

void follow_coordinator(JobRouter& router, comm::Communicator& comm) {
  for (;;) {
    std::int64_t command = kHeartbeat;
    comm.broadcast({&command, 1, comm::DataType::kInt64}, 0);
    try {
      switch (command) {
        case kHeartbeat: break;
        case kBatch: (void)router.apply_batch({}, {}); break;
        case kAdopt: (void)router.adopt_retrain(nullptr); break;
        case kStop: return;
        default:
          throw comm::CommError("rank " + std::to_string(comm.rank()) + ": unknown command " + std::to_string(command) +
                                " from rank 0");
      }
    } catch (const comm::CommError&) {
      throw;
    } catch (const std::exception& e) {
      // Every rank agreed on this failure (comm/agree.h); rank 0 retries the batch.
      spdlog::warn("rank {}: batch failed: {}", comm.rank(), e.what());
    }
  }
}

}  // namespace lethe::deletion
