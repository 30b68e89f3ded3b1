// storage/ledger.h — the deletion ledger (DESIGN.md §6): every deletion request and its receipt
// in SQLite (WAL, synchronous=FULL, secure_delete), durable before it is acknowledged. See docs/LEDGER.md.
#pragma once

#include <cstdint>
#include <exception>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/error.h"

namespace lethe::storage {

namespace sqlite {
class Database;  // storage/sqlite.h
}  // namespace sqlite

// Every ledger failure; the message names the operation and the ledger file, and says what to do.
class LedgerError : public StorageError {
 public:
  using StorageError::StorageError;
};

// queued -> applied -> completed, or queued/applied -> failed. Completed and failed are final.
enum class RequestStatus { kQueued, kApplied, kCompleted, kFailed };
[[nodiscard]] std::string_view to_string(RequestStatus status);

struct LedgerRequest {
  std::string id;                                // "del-" + 16 random hex characters
  std::optional<std::string> idempotency_key;    // in clear while queued/applied; unset once finished
  std::vector<std::string> record_ids;           // in clear while queued/applied; EMPTY once finished
  std::optional<std::string> subject;            // in clear while queued/applied; unset once finished
  std::vector<std::string> record_hashes;        // hash_id() of each record id, always kept
  std::optional<std::string> subject_hash;       // hash_id(subject) when the request named a subject
  RequestStatus status = RequestStatus::kQueued;
  std::int64_t submitted_ms = 0, applied_ms = 0, completed_ms = 0;  // unix ms; 0 = not yet
  nlohmann::json receipt;                        // the coordinator's receipt (an object); null until applied
  std::string error;                             // the reason, when failed
};

struct SubmitResult {
  LedgerRequest request;
  bool created = false;  // false: an earlier request with the same idempotency key
};

// Clear record ids, subjects and idempotency keys left in rows of finished (completed or failed)
// requests; both 0 in a ledger that keeps its promise.
struct ClearValues {
  std::int64_t finished_record_ids = 0;
  std::int64_t finished_subjects_or_keys = 0;
};

// Effective connection settings, read back from SQLite (for tests and diagnostics).
struct LedgerSettings {
  std::string journal_mode;  // "wal"
  int synchronous = 0;       // 2 = FULL
  bool secure_delete = false;
  bool foreign_keys = false;
  int busy_timeout_ms = 0;
  int schema_version = 0;
};

// A job's ledger: <job_dir>/ledger.sqlite. It exists once the job has taken a deletion request.
[[nodiscard]] std::filesystem::path job_ledger_path(const std::filesystem::path& job_dir);

// One ledger file. Thread-safe: one SQLite connection guarded by a mutex, so HTTP threads may
// submit() while the coordinator's worker thread drives the rest. One process should write a
// ledger at a time (the job's JobLock ensures it); SQLite's own locking keeps others consistent.
class Ledger {
 public:
  // 2: receipts carry a salted digest (receipt_digest); a version 1 ledger is upgraded when opened
  // read-write.
  static constexpr int kSchemaVersion = 2;

  // kReadOnly: a reader beside the job's writer (`lethe status` while `lethe serve` runs; WAL lets
  // readers in): the file must exist, nothing is created or changed, and every transition fails.
  enum class Access { kReadWrite, kReadOnly };

  // What opening read-write does with a ledger whose write-ahead log was removed after a crash
  // (<path>-wal missing while the file says it was open): the requests acknowledged since the last
  // checkpoint are gone with it. kRefuse throws LedgerError kDamaged saying so; kAccept (the
  // operator's explicit choice, `--accept-ledger-loss`) records the loss in the meta table and opens.
  enum class LostLog { kRefuse, kAccept };

  // Opens the ledger at `path`, creating it (mode 0600) when the file does not exist or is empty;
  // a new ledger's schema and salt are checkpointed into the file before it returns, so they never
  // live only in the WAL. LedgerError when the file is not a SQLite database, is a database but not
  // a Lethe ledger, or was written by a newer Lethe (schema version above kSchemaVersion); kDamaged
  // when SQLite's integrity check fails, the salt does not match its digest, or the WAL was lost.
  explicit Ledger(const std::filesystem::path& path, Access access = Access::kReadWrite,
                  LostLog lost_log = LostLog::kRefuse);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Records a new queued request; durable when it returns (one transaction committed with
  // synchronous=FULL), so the caller may acknowledge it. Exactly one of non-empty `record_ids`
  // and `subject` (request.h validates the strings). With an `idempotency_key` used before,
  // returns that request with created=false — or throws LedgerError when the earlier request
  // asked for other records (compared as a set) or another subject.
  SubmitResult submit(const std::vector<std::string>& record_ids, const std::optional<std::string>& subject,
                      const std::optional<std::string>& idempotency_key);

  // LedgerError kDamaged when a stored receipt does not match its digest (the file was altered).
  [[nodiscard]] std::optional<LedgerRequest> get(std::string_view id) const;
  // Queued and applied requests in submission order: what a restarted coordinator replays.
  [[nodiscard]] std::vector<LedgerRequest> unfinished() const;

  // Transitions. Each is one transaction; an unknown id or an illegal transition throws
  // LedgerError saying so. Receipts must be JSON objects (fail() also accepts null) and must not
  // hold any of the request's record ids or its subject in clear (use hash_id()): the ledger
  // refuses such a receipt, naming the JSON path of the offending value.
  void mark_applied(std::string_view id, const nlohmann::json& receipt);  // queued -> applied
  // The same for a batch of (id, receipt), in one transaction (one fsync): all or none.
  void mark_applied(const std::vector<std::pair<std::string, nlohmann::json>>& receipts);
  // queued/applied -> completed: stores the receipt and removes the clear record ids, subject and
  // idempotency key (their salted hashes stay). Completing twice is refused.
  void complete(std::string_view id, const nlohmann::json& receipt);
  // The same for a batch of (id, receipt), in one transaction (one fsync): all or none.
  void complete(const std::vector<std::pair<std::string, nlohmann::json>>& receipts);
  // queued/applied -> failed, with `reason` (non-empty); removes the clear values like complete().
  void fail(std::string_view id, const std::string& reason, const nlohmann::json& receipt);

  // Number of requests in each status (every status present, zero included), for /metrics.
  [[nodiscard]] std::map<RequestStatus, std::int64_t> counts() const;

  // Clear values the ledger still holds for finished requests: none, when the ledger keeps its
  // promise (docs/LEDGER.md). For audits (`lethe status`).
  [[nodiscard]] ClearValues clear_values() const;

  // Lowercase hex SHA-256 of (this ledger's 32-byte random salt || id). Stable for the life of
  // the ledger file; different between ledgers.
  [[nodiscard]] std::string hash_id(std::string_view id) const;

  // Makes sure no clear value of a finished request survives in the database files: secure_delete
  // zeroed the replaced values in their pages; a WAL checkpoint(TRUNCATE) copies those pages into
  // the database file and empties the -wal file, which still held the old page images. Throws
  // LedgerError when the checkpoint cannot complete (another connection is reading).
  void scrub();

  [[nodiscard]] LedgerSettings settings() const;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  // Schema version 1 -> 2 (receipt digests), in one transaction; nothing when already 2.
  void upgrade_locked();
  [[nodiscard]] LedgerRequest load_locked(std::int64_t seq) const;
  [[nodiscard]] std::optional<std::int64_t> seq_of_locked(std::string_view id) const;
  void finish(std::string_view id, RequestStatus status, const std::string& reason, const nlohmann::json& receipt);
  // finish() inside the caller's transaction, with mutex_ held.
  void finish_locked(std::string_view id, RequestStatus status, const std::string& reason, const nlohmann::json& receipt);

  // One submit() call waiting for its group's commit.
  struct PendingSubmission {
    const std::vector<std::string>* record_ids;
    const std::optional<std::string>* subject;
    const std::optional<std::string>* idempotency_key;
    std::optional<SubmitResult> result;
    std::exception_ptr error;
    bool done = false;
  };
  // The leader's part of submit(): one transaction for the group, a savepoint per request.
  void commit_submissions(const std::vector<PendingSubmission*>& group);
  // Inserts one request (or finds its idempotency key) inside the caller's transaction:
  // (seq, created).
  std::pair<std::int64_t, bool> submit_locked(const std::vector<std::string>& record_ids,
                                              const std::optional<std::string>& subject,
                                              const std::optional<std::string>& idempotency_key);

  std::filesystem::path path_;
  std::unique_ptr<sqlite::Database> db_;
  std::string salt_;  // raw bytes
  bool read_only_ = false;
  bool receipt_digests_ = true;  // false: a version 1 ledger opened read-only (not upgraded)
  mutable std::mutex mutex_;
  std::mutex submit_mutex_;  // guards the group-commit queue below
  std::condition_variable submit_done_;
  std::vector<PendingSubmission*> submit_queue_;
  bool submit_leader_active_ = false;
};

}  // namespace lethe::storage
