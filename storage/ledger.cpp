#include "storage/ledger.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <span>

#include "storage/durable_file.h"
#include "storage/hashing.h"
#include "storage/sqlite.h"

namespace lethe::storage {

std::filesystem::path job_ledger_path(const std::filesystem::path& job_dir) { return job_dir / "ledger.sqlite"; }


namespace {

constexpr std::string_view kFormat = "lethe-deletion-ledger";
constexpr std::size_t kSaltBytes = 32;
constexpr int kBusyTimeoutMs = 5000;

// Clear values (record ids, subject, idempotency key) are never indexed: an index page would keep
// a copy that the UPDATE ... = NULL at completion does not reach. request_records is a rowid table
// for the same reason (a WITHOUT ROWID table copies whole rows into its interior pages).
constexpr const char* kSchema = R"sql(
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value BLOB NOT NULL
);
CREATE TABLE requests (
  seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
  id                   TEXT NOT NULL UNIQUE,
  idempotency_key      TEXT,
  idempotency_key_hash TEXT UNIQUE,
  subject              TEXT,
  subject_hash         TEXT,
  payload_hash         TEXT NOT NULL,
  status               TEXT NOT NULL CHECK (status IN ('queued', 'applied', 'completed', 'failed')),
  submitted_ms         INTEGER NOT NULL,
  applied_ms           INTEGER NOT NULL DEFAULT 0,
  completed_ms         INTEGER NOT NULL DEFAULT 0,
  receipt              TEXT,
  receipt_digest       TEXT,
  error                TEXT NOT NULL DEFAULT '',
  CHECK (status IN ('queued', 'applied') OR (subject IS NULL AND idempotency_key IS NULL))
);
CREATE INDEX requests_by_status ON requests (status, seq);
CREATE TABLE request_records (
  request_seq INTEGER NOT NULL REFERENCES requests (seq) ON DELETE CASCADE,
  position    INTEGER NOT NULL,
  record_id   TEXT,
  record_hash TEXT NOT NULL,
  UNIQUE (request_seq, position)
);
CREATE INDEX request_records_by_hash ON request_records (record_hash);
)sql";

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string random_bytes(std::size_t count, const std::filesystem::path& path) {
  std::string bytes(count, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(count)) != 1)
    throw LedgerError("ledger " + path.string() + ": OpenSSL RAND_bytes failed; check the libcrypto installation");
  return bytes;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    out += kHex[byte >> 4];
    out += kHex[byte & 0xf];
  }
  return out;
}

std::optional<RequestStatus> status_from(std::string_view text) {
  for (const auto status : {RequestStatus::kQueued, RequestStatus::kApplied, RequestStatus::kCompleted,
                            RequestStatus::kFailed}) {
    if (to_string(status) == text) return status;
  }
  return std::nullopt;
}

// `key` as one RFC 6901 reference token.
std::string pointer_token(const std::string& key) {
  std::string token;
  for (const char c : key) {
    if (c == '~') token += "~0";
    else if (c == '/') token += "~1";
    else token += c;
  }
  return token;
}

// The JSON path (RFC 6901 pointer) of the first string (value or key) of `value` that is in `clear`.
std::optional<std::string> find_clear_value(const nlohmann::json& value, const std::set<std::string>& clear,
                                            const std::string& where) {
  if (value.is_string()) {
    if (clear.count(value.get_ref<const std::string&>()) != 0) return where.empty() ? "/" : where;
    return std::nullopt;
  }
  if (value.is_array()) {
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (auto found = find_clear_value(value[i], clear, where + "/" + std::to_string(i))) return found;
    }
  } else if (value.is_object()) {
    for (const auto& [key, item] : value.items()) {
      const std::string path = where + "/" + pointer_token(key);
      if (clear.count(key) != 0) return path + " (as a key)";
      if (auto found = find_clear_value(item, clear, path)) return found;
    }
  }
  return std::nullopt;
}

}  // namespace

std::string_view to_string(RequestStatus status) {
  switch (status) {
    case RequestStatus::kQueued: return "queued";
    case RequestStatus::kApplied: return "applied";
    case RequestStatus::kCompleted: return "completed";
    case RequestStatus::kFailed: return "failed";
  }
  return "unknown";
}

namespace {

using sqlite::Database;
using sqlite::Statement;
using sqlite::Transaction;

// What to do about a failed SQLite call on the ledger, by its result code.
std::string hint(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "; another process holds the ledger (is another `lethe serve` or `lethe delete --job` running "
             "on this job?): stop it and retry";
    case SQLITE_NOTADB:
      return "; the file is not a SQLite database, so not a Lethe deletion ledger: move it aside or pass the "
             "job's ledger.sqlite (a new ledger is created where no file exists)";
    case SQLITE_CORRUPT:
      return "; the ledger file is damaged: restore it from a backup";
    case SQLITE_FULL:
    case SQLITE_IOERR:
      return "; check the disk (full or failing?)";
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return "; check the permissions of the file and its directory";
    default: return "";
  }
}

// The ledger's connection: its SQLite failures are LedgerErrors, with a hint where one helps.
std::unique_ptr<Database> open_database(const std::filesystem::path& path, bool read_only) {
  return std::make_unique<Database>(
      path, read_only, "ledger " + path.string(),
      [](const std::string& message, int rc) {
        // A full disk is transient: the coordinator retries it, the service answers 503.
        if ((rc & 0xff) == SQLITE_FULL) throw LedgerError(StorageErrorKind::kNoSpace, message);
        if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) throw LedgerError(StorageErrorKind::kDamaged, message);
        throw LedgerError(message);
      },
      hint);
}

// Creates `path` empty with mode 0600 when it does not exist: the ledger holds record ids in clear
// until completion, and SQLite gives its -wal and -shm files the database file's mode.
void create_private_file(const std::filesystem::path& path) {
  const auto parent = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  if (!std::filesystem::is_directory(parent))
    throw LedgerError("ledger " + path.string() + ": the directory " + parent.string() +
                      " does not exist; create the job directory first");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return;
    throw LedgerError("ledger " + path.string() + ": cannot create: " + std::strerror(errno) +
                      "; check the permissions of " + parent.string());
  }
  ::close(fd);
  fsync_directory(parent);
}

// SQLite reads a file shorter than one page as an empty database (and would then write over
// it): anything non-empty must start with SQLite's header to be opened at all.
void check_sqlite_header(const std::filesystem::path& path) {
  static constexpr std::string_view kHeader("SQLite format 3\0", 16);
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (error || size == 0) return;  // not a regular file: sqlite3_open_v2 reports it
  std::string head(kHeader.size(), '\0');
  std::ifstream in(path, std::ios::binary);
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  if (in.gcount() != static_cast<std::streamsize>(head.size()) || head != kHeader)
    throw LedgerError("ledger " + path.string() + ": the file is not a SQLite database (no SQLite header), so not a "
                      "Lethe deletion ledger: move it aside or pass the job's ledger.sqlite (a new ledger is created "
                      "where no file exists)");
}

std::optional<std::string> meta_value(Database& db, const char* key) {
  Statement select(db, "SELECT value FROM meta WHERE key = ?", std::string("reading meta '") + key + "'");
  select.bind(1, std::string_view(key));
  if (!select.step()) return std::nullopt;
  return select.text(0);
}

std::string pragma_text(const Database& db, const char* pragma) {
  Statement query(db, (std::string("PRAGMA ") + pragma).c_str(), std::string("reading PRAGMA ") + pragma);
  if (!query.step()) return {};
  return query.text(0);
}

void set_pragma(Database& db, const std::string& pragma, std::string_view expected) {
  // PRAGMA journal_mode answers with the mode in effect; the others are read back to check.
  Statement set(db, ("PRAGMA " + pragma).c_str(), "setting PRAGMA " + pragma);
  std::string answer;
  if (set.step()) answer = set.text(0);
  if (expected.empty()) return;
  if (answer.empty()) {
    const auto name = pragma.substr(0, pragma.find('='));
    answer = pragma_text(db, name.c_str());
  }
  if (answer != expected)
    throw LedgerError("ledger " + db.path().string() + ": PRAGMA " + pragma + " left '" + answer + "' instead of '" +
                      std::string(expected) + "'; put the job directory on a local file system (WAL needs shared "
                      "memory and POSIX locks)");
}

// The salted digest stored beside a receipt: a flipped byte in either is found when it is read.
std::string receipt_digest(const Ledger& ledger, std::string_view id, std::string_view receipt_text) {
  return ledger.hash_id("receipt\x1f" + std::string(id) + "\x1f" + std::string(receipt_text));
}

void set_meta(Database& db, const char* key, std::string_view value) {
  Statement upsert(db, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   std::string("writing meta '") + key + "'");
  upsert.bind(1, std::string_view(key)).bind(2, value).run();
}

// Copies the WAL into the database file and empties the WAL; false when another connection kept
// it from completing.
bool checkpoint_truncate(Database& db, const std::string& operation) {
  Statement checkpoint(db, "PRAGMA wal_checkpoint(TRUNCATE)", operation);
  return checkpoint.step() && checkpoint.int64(0) == 0;
}

// SQLite's own check of the file's structure (pages, indexes); kDamaged with what it found.
void check_integrity(Database& db, const std::filesystem::path& path) {
  Statement check(db, "PRAGMA quick_check", "checking the ledger's integrity");
  std::string found;
  while (check.step()) {
    const auto line = check.text(0);
    if (line == "ok") continue;
    if (!found.empty()) found += "; ";
    found += line;
    if (found.size() > 400) break;
  }
  if (!found.empty())
    throw LedgerError(StorageErrorKind::kDamaged, "ledger " + path.string() + ": SQLite's integrity check failed (" +
                                                      found + "); the file is damaged: restore it from a backup");
}

}  // namespace

// ---- Ledger ----

Ledger::Ledger(const std::filesystem::path& path, Access access, LostLog lost_log) : path_(path) {
  const bool read_only = access == Access::kReadOnly;
  read_only_ = read_only;
  // Looked at before SQLite opens the file, which creates an empty WAL where none is.
  const bool wal_present = std::filesystem::exists(path_.string() + "-wal");
  if (read_only && !std::filesystem::is_regular_file(path_))
    throw LedgerError("ledger " + path_.string() + ": does not exist; a job has a ledger once `lethe serve` or "
                      "`lethe delete --job` has run on it");
  if (!read_only) create_private_file(path_);
  check_sqlite_header(path_);
  db_ = open_database(path_, read_only);
  auto& db = *db_;
  if (const int rc = sqlite3_busy_timeout(db.handle(), kBusyTimeoutMs); rc != SQLITE_OK)
    db.raise("setting the busy timeout", rc);

  check_integrity(db, path_);

  // Identify the file before changing anything in it (journal mode included).
  std::set<std::string> tables;
  {
    Statement list(db, "SELECT name FROM sqlite_master WHERE type = 'table'", "reading the schema");
    while (list.step()) tables.insert(list.text(0));
  }
  const bool fresh = tables.empty();
  if (fresh && read_only)
    throw LedgerError("ledger " + path_.string() + ": the file is empty, so not yet a Lethe deletion ledger; open it "
                      "read-write (`lethe serve`, `lethe delete --job`) to create it");
  if (!fresh) {
    const auto not_ledger = [&](const std::string& why) {
      return LedgerError("ledger " + path_.string() + ": this SQLite database is not a Lethe deletion ledger (" + why +
                         "); move it aside or pass the job's ledger.sqlite (a new ledger is created where no file "
                         "exists)");
    };
    if (tables.count("meta") == 0) throw not_ledger("it has no meta table");
    const auto format = meta_value(db, "format");
    if (format != kFormat) throw not_ledger("its meta table has no format '" + std::string(kFormat) + "'");
    const auto version_text = meta_value(db, "schema_version").value_or("");
    int version = 0;
    try {
      version = std::stoi(version_text);
    } catch (const std::exception&) {
      throw not_ledger("its schema_version '" + version_text + "' is not a number");
    }
    if (version > kSchemaVersion)
      throw LedgerError("ledger " + path_.string() + ": written by a newer Lethe (ledger schema version " +
                        std::to_string(version) + "; this build reads up to " + std::to_string(kSchemaVersion) +
                        "); run a Lethe at least as new as the one that wrote it");
    if (version < 1) throw not_ledger("schema_version " + std::to_string(version));
  }

  if (!read_only) {  // a reader's connection keeps what the writer set in the file (WAL)
    set_pragma(db, "journal_mode=WAL", "wal");
    set_pragma(db, "synchronous=FULL", "2");
    set_pragma(db, "secure_delete=ON", "1");
    set_pragma(db, "foreign_keys=ON", "1");
    set_pragma(db, "temp_store=MEMORY", "2");  // no temporary files holding copies of rows
    // The WAL file stays after a clean close (emptied: journal_size_limit=0), so that a missing
    // one always means someone removed it; see the "state" check below.
    int persist = 1;
    if (const int rc = sqlite3_file_control(db.handle(), "main", SQLITE_FCNTL_PERSIST_WAL, &persist); rc != SQLITE_OK)
      db.raise("keeping the WAL file (SQLITE_FCNTL_PERSIST_WAL)", rc);
    set_pragma(db, "journal_size_limit=0", "0");
  }

  if (fresh) {
    Transaction transaction(db, "creating the ledger schema");
    db.exec(kSchema, "creating the ledger schema");
    Statement insert(db, "INSERT INTO meta (key, value) VALUES (?, ?)", "writing the ledger meta table");
    insert.bind(1, std::string_view("format")).bind(2, kFormat).run();
    insert.reset();
    insert.bind(1, std::string_view("schema_version")).bind(2, std::string_view(std::to_string(kSchemaVersion))).run();
    insert.reset();
    const auto salt = random_bytes(kSaltBytes, path_);
    insert.bind(1, std::string_view("salt")).bind_blob(2, salt).run();
    insert.reset();
    insert.bind(1, std::string_view("salt_sha256")).bind(2, std::string_view(sha256_hex(std::as_bytes(std::span<const char>(salt.data(), salt.size()))))).run();
    insert.reset();
    insert.bind(1, std::string_view("created_ms")).bind(2, std::string_view(std::to_string(now_ms()))).run();
    transaction.commit();
  }
  auto salt = meta_value(db, "salt");
  if (!salt || salt->size() != kSaltBytes)
    throw LedgerError(StorageErrorKind::kDamaged, "ledger " + path_.string() + ": its salt is missing or not " +
                                                      std::to_string(kSaltBytes) + " bytes; the file is damaged: restore it from a backup");
  const auto salt_digest = sha256_hex(std::as_bytes(std::span<const char>(salt->data(), salt->size())));
  const auto stored_digest = meta_value(db, "salt_sha256");
  if (stored_digest && *stored_digest != salt_digest)
    throw LedgerError(StorageErrorKind::kDamaged,
                      "ledger " + path_.string() + ": its salt does not match the salt's SHA-256 stored beside it, so "
                      "every hash in its receipts would be unverifiable; the file is damaged: restore it from a backup");
  salt_ = std::move(*salt);

  if (read_only) {
    Statement columns(db, "SELECT 1 FROM pragma_table_info('requests') WHERE name = 'receipt_digest'", "reading the schema");
    receipt_digests_ = columns.step();
    return;
  }
  if (!fresh) {
    // A clean close leaves "closed" (and the emptied WAL file); "open" with no WAL file means the
    // process died and the WAL, with every request acknowledged since the last checkpoint, was removed.
    if (meta_value(db, "state") == std::optional<std::string>("open") && !wal_present) {
      if (lost_log == LostLog::kRefuse) {
        // Reading the state made SQLite create an empty WAL: remove it, or the next open (with
        // nothing restored) would find a WAL and take the loss for recovered.
        db_.reset();
        std::error_code ignored;
        const std::filesystem::path wal(path_.string() + "-wal");
        if (std::filesystem::file_size(wal, ignored) == 0) std::filesystem::remove(wal, ignored);
        throw LedgerError(StorageErrorKind::kDamaged,
                          "ledger " + path_.string() + ": its write-ahead log " + path_.string() +
                              "-wal is missing although the ledger was not closed cleanly, so deletion requests "
                              "acknowledged since its last checkpoint are lost; put the -wal file back (it is part of "
                              "the ledger, never a temporary file) and start again. If it is gone for good, start once "
                              "with --accept-ledger-loss and ask the clients of the lost requests to resubmit (if a SQLite tool, "
                              "e.g. the sqlite3 shell or Python, opened the ledger after the crash, it copied the WAL "
                              "into the file before removing it: then nothing was lost)");
      }
      set_meta(db, "wal_loss_accepted_ms", std::to_string(now_ms()));
    }
    upgrade_locked();
    if (!stored_digest) set_meta(db, "salt_sha256", salt_digest);
  }
  try {
    set_meta(db, "state", "open");
    // The schema, salt and state go into the database file now, not only into the WAL.
    (void)checkpoint_truncate(db, "checkpointing the ledger at open");
  } catch (const LedgerError& e) {
    // A full disk must not keep the service from starting (it retries its batches until space is
    // freed); only the check for a WAL removed after a crash is weaker until the next open.
    if (e.kind() != StorageErrorKind::kNoSpace) throw;
  }
}

Ledger::~Ledger() {
  if (!db_ || read_only_) return;
  try {
    set_meta(*db_, "state", "closed");
    (void)checkpoint_truncate(*db_, "checkpointing the ledger at close");
  } catch (const std::exception&) {
    // Left "open": the next open checks that the WAL is there, which it is (persistent).
  }
}

void Ledger::upgrade_locked() {
  auto& db = *db_;
  const auto version = std::stoi(meta_value(db, "schema_version").value_or("1"));
  if (version >= 2) return;
  Transaction transaction(db, "upgrading the ledger to schema version 2");
  db.exec("ALTER TABLE requests ADD COLUMN receipt_digest TEXT", "upgrading the ledger to schema version 2");
  std::vector<std::pair<std::string, std::string>> receipts;
  {
    Statement select(db, "SELECT id, receipt FROM requests WHERE receipt IS NOT NULL", "reading receipts to upgrade");
    while (select.step()) receipts.emplace_back(select.text(0), select.text(1));
  }
  Statement update(db, "UPDATE requests SET receipt_digest = ? WHERE id = ?", "digesting receipts to upgrade");
  for (const auto& [id, text] : receipts) {
    update.bind(1, std::string_view(receipt_digest(*this, id, text))).bind(2, std::string_view(id)).run();
    update.reset();
  }
  set_meta(db, "schema_version", "2");
  transaction.commit();
}

std::string Ledger::hash_id(std::string_view id) const {
  std::string input = salt_;
  input.append(id);
  return sha256_hex(std::as_bytes(std::span<const char>(input.data(), input.size())));
}

namespace {

// Salted hashes of what a request asked for and of its idempotency key, in their own domains so
// that they never equal hash_id() of a record.
// The record ids count as a set: a retry listing them in another order is the same request.
std::string payload_hash(const Ledger& ledger, const std::vector<std::string>& record_ids,
                         const std::optional<std::string>& subject) {
  const std::set<std::string> records(record_ids.begin(), record_ids.end());
  nlohmann::json payload = {{"records", records}, {"subject", subject ? nlohmann::json(*subject) : nlohmann::json(nullptr)}};
  return ledger.hash_id("payload\x1f" + payload.dump());
}

std::string key_hash(const Ledger& ledger, const std::string& key) { return ledger.hash_id("idempotency-key\x1f" + key); }

}  // namespace

SubmitResult Ledger::submit(const std::vector<std::string>& record_ids, const std::optional<std::string>& subject,
                            const std::optional<std::string>& idempotency_key) {
  if (record_ids.empty() == !subject.has_value())
    throw LedgerError("ledger " + path_.string() + ": a deletion request names record ids or a subject, exactly one of them (got " +
                      (subject ? "both" : "neither") + ")");
  if (subject && subject->empty()) throw LedgerError("ledger " + path_.string() + ": the subject of a deletion request is empty");
  if (idempotency_key && idempotency_key->empty())
    throw LedgerError("ledger " + path_.string() + ": the idempotency key of a deletion request is empty");
  for (const auto& id : record_ids) {
    if (id.empty()) throw LedgerError("ledger " + path_.string() + ": a deletion request holds an empty record id");
  }

  // Group commit: concurrent submissions share one transaction, so one WAL fsync acknowledges them
  // all (one fsync per request would cap the service at ~1/fsync-latency requests per second).
  PendingSubmission me{&record_ids, &subject, &idempotency_key};
  std::unique_lock lock(submit_mutex_);
  submit_queue_.push_back(&me);
  while (!me.done) {
    if (submit_leader_active_) {
      submit_done_.wait(lock);
      continue;
    }
    submit_leader_active_ = true;
    std::vector<PendingSubmission*> group;
    group.swap(submit_queue_);
    lock.unlock();
    commit_submissions(group);
    lock.lock();
    submit_leader_active_ = false;
    for (auto* pending : group) pending->done = true;
    submit_done_.notify_all();
  }
  if (me.error) std::rethrow_exception(me.error);
  return std::move(*me.result);
}

void Ledger::commit_submissions(const std::vector<PendingSubmission*>& group) {
  const std::lock_guard lock(mutex_);
  auto& db = *db_;
  try {
    std::vector<std::pair<PendingSubmission*, std::pair<std::int64_t, bool>>> inserted;
    Transaction transaction(db, "submitting " + std::to_string(group.size()) + " deletion request(s)");
    for (auto* pending : group) {
      // A savepoint per request: one request's error (a reused idempotency key) leaves the others.
      db.exec("SAVEPOINT submission", "submitting a deletion request (savepoint)");
      try {
        inserted.emplace_back(pending, submit_locked(*pending->record_ids, *pending->subject, *pending->idempotency_key));
        db.exec("RELEASE submission", "submitting a deletion request (release)");
      } catch (const LedgerError&) {
        pending->error = std::current_exception();
        db.exec("ROLLBACK TO submission", "submitting a deletion request (rollback)");
        db.exec("RELEASE submission", "submitting a deletion request (release)");
      }
    }
    transaction.commit();  // synchronous=FULL: the WAL is fsynced before COMMIT returns
    for (auto& [pending, result] : inserted) pending->result = SubmitResult{load_locked(result.first), result.second};
  } catch (...) {
    for (auto* pending : group) {
      if (!pending->error) pending->error = std::current_exception();
      pending->result.reset();
    }
  }
}

std::pair<std::int64_t, bool> Ledger::submit_locked(const std::vector<std::string>& record_ids,
                                                    const std::optional<std::string>& subject,
                                                    const std::optional<std::string>& idempotency_key) {
  auto& db = *db_;
  const std::string payload = payload_hash(*this, record_ids, subject);
  const std::optional<std::string> key = idempotency_key ? std::optional(key_hash(*this, *idempotency_key)) : std::nullopt;

  if (key) {
    Statement earlier(db, "SELECT seq, id, payload_hash FROM requests WHERE idempotency_key_hash = ?",
                      "looking up an idempotency key");
    earlier.bind(1, std::string_view(*key));
    if (earlier.step()) {
      const auto seq = earlier.int64(0);
      if (earlier.text(2) != payload)
        throw LedgerError(StorageErrorKind::kIdempotencyConflict, "ledger " + path_.string() + ": the idempotency key was already used for request " +
                          earlier.text(1) + ", which named other records or another subject; use a new key for a new request");
      return {seq, false};
    }
  }

  std::string id;
  for (int attempt = 0;; ++attempt) {
    id = "del-" + to_hex(random_bytes(8, path_));
    if (!seq_of_locked(id)) break;
    if (attempt == 8) throw LedgerError("ledger " + path_.string() + ": cannot draw an unused request id; check the random source");
  }

  const std::string operation = "recording request " + id;
  Statement insert(db,
                   "INSERT INTO requests (id, idempotency_key, idempotency_key_hash, subject, subject_hash, payload_hash, "
                   "status, submitted_ms) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                   operation);
  insert.bind(1, std::string_view(id))
      .bind_optional(2, idempotency_key)
      .bind_optional(3, key)
      .bind_optional(4, subject)
      .bind_optional(5, subject ? std::optional(hash_id(*subject)) : std::nullopt)
      .bind(6, std::string_view(payload))
      .bind(7, now_ms())
      .run();
  const std::int64_t seq = sqlite3_last_insert_rowid(db.handle());
  Statement record(db, "INSERT INTO request_records (request_seq, position, record_id, record_hash) VALUES (?, ?, ?, ?)",
                   operation + " (its record ids)");
  for (std::size_t i = 0; i < record_ids.size(); ++i) {
    record.bind(1, seq).bind(2, static_cast<std::int64_t>(i)).bind(3, std::string_view(record_ids[i]));
    record.bind(4, std::string_view(hash_id(record_ids[i]))).run();
    record.reset();
  }
  return {seq, true};
}

std::optional<std::int64_t> Ledger::seq_of_locked(std::string_view id) const {
  Statement select(*db_, "SELECT seq FROM requests WHERE id = ?", "looking up request " + std::string(id));
  select.bind(1, id);
  if (!select.step()) return std::nullopt;
  return select.int64(0);
}

LedgerRequest Ledger::load_locked(std::int64_t seq) const {
  auto& db = *db_;
  Statement row(db,
                receipt_digests_ ? "SELECT id, idempotency_key, subject, subject_hash, status, submitted_ms, applied_ms, "
                                   "completed_ms, receipt, error, receipt_digest FROM requests WHERE seq = ?"
                                 : "SELECT id, idempotency_key, subject, subject_hash, status, submitted_ms, applied_ms, "
                                   "completed_ms, receipt, error, NULL FROM requests WHERE seq = ?",
                "reading request #" + std::to_string(seq));
  row.bind(1, seq);
  if (!row.step()) throw LedgerError("ledger " + path_.string() + ": request #" + std::to_string(seq) + " vanished");
  LedgerRequest request;
  request.id = row.text(0);
  request.idempotency_key = row.optional_text(1);
  request.subject = row.optional_text(2);
  request.subject_hash = row.optional_text(3);
  const auto status_text = row.text(4);
  const auto status = status_from(status_text);
  if (!status)
    throw LedgerError("ledger " + path_.string() + ": request " + request.id + " has unknown status '" + status_text +
                      "'; the file is damaged or from another program");
  request.status = *status;
  request.submitted_ms = row.int64(5);
  request.applied_ms = row.int64(6);
  request.completed_ms = row.int64(7);
  if (!row.is_null(8)) {
    // Every receipt written since schema version 2 has its digest; one without is from before the
    // upgrade only if the upgrade digested it, so a missing digest beside a receipt is damage too.
    if (receipt_digests_ && (row.is_null(10) || row.text(10) != receipt_digest(*this, request.id, row.text(8))))
      throw LedgerError(StorageErrorKind::kDamaged,
                        "ledger " + path_.string() + ": the receipt of request " + request.id +
                            " does not match its digest: the file was altered or damaged; restore it from a backup");
    try {
      request.receipt = nlohmann::json::parse(row.text(8));
    } catch (const nlohmann::json::exception& e) {
      throw LedgerError("ledger " + path_.string() + ": the receipt of request " + request.id +
                        " is not valid JSON (" + e.what() + "); the file is damaged: restore it from a backup");
    }
  }
  request.error = row.text(9);

  Statement records(db, "SELECT record_id, record_hash FROM request_records WHERE request_seq = ? ORDER BY position",
                    "reading the records of request " + request.id);
  records.bind(1, seq);
  while (records.step()) {
    if (!records.is_null(0)) request.record_ids.push_back(records.text(0));
    request.record_hashes.push_back(records.text(1));
  }
  return request;
}

std::optional<LedgerRequest> Ledger::get(std::string_view id) const {
  const std::lock_guard lock(mutex_);
  const auto seq = seq_of_locked(id);
  if (!seq) return std::nullopt;
  return load_locked(*seq);
}

std::vector<LedgerRequest> Ledger::unfinished() const {
  const std::lock_guard lock(mutex_);
  std::vector<std::int64_t> seqs;
  {
    Statement select(*db_, "SELECT seq FROM requests WHERE status IN ('queued', 'applied') ORDER BY seq",
                     "listing unfinished requests");
    while (select.step()) seqs.push_back(select.int64(0));
  }
  std::vector<LedgerRequest> requests;
  requests.reserve(seqs.size());
  for (const auto seq : seqs) requests.push_back(load_locked(seq));
  return requests;
}

namespace {

// Checks a receipt before it is stored: its kind, and that it names none of the request's clear values.
void check_receipt(const std::filesystem::path& path, const LedgerRequest& request, const nlohmann::json& receipt,
                   bool null_allowed) {
  if (!receipt.is_object() && !(null_allowed && receipt.is_null()))
    throw LedgerError("ledger " + path.string() + ": the receipt for request " + request.id + " must be a JSON object" +
                      (null_allowed ? " or null" : "") + ", not " + receipt.type_name());
  std::set<std::string> clear(request.record_ids.begin(), request.record_ids.end());
  if (request.subject) clear.insert(*request.subject);
  if (const auto where = find_clear_value(receipt, clear, ""))
    throw LedgerError("ledger " + path.string() + ": the receipt for request " + request.id +
                      " holds one of its record ids or its subject in clear at " + *where +
                      "; receipts keep them as salted hashes: store hash_id(value) there");
}

}  // namespace

void Ledger::mark_applied(std::string_view id, const nlohmann::json& receipt) {
  mark_applied({{std::string(id), receipt}});
}

void Ledger::mark_applied(const std::vector<std::pair<std::string, nlohmann::json>>& receipts) {
  const std::lock_guard lock(mutex_);
  auto& db = *db_;
  Transaction transaction(db, "marking " + std::to_string(receipts.size()) + " request(s) applied");
  for (const auto& [id, receipt] : receipts) {
    const std::string operation = "marking request " + id + " applied";
    const auto seq = seq_of_locked(id);
    if (!seq) throw LedgerError("ledger " + path_.string() + ": " + operation + ": no such request");
    const auto request = load_locked(*seq);
    if (request.status != RequestStatus::kQueued)
      throw LedgerError("ledger " + path_.string() + ": " + operation + ": it is " + std::string(to_string(request.status)) +
                        ", and only a queued request can be marked applied");
    check_receipt(path_, request, receipt, false);
    Statement update(db, "UPDATE requests SET status = 'applied', applied_ms = ?, receipt = ?, receipt_digest = ? WHERE seq = ?",
                     operation);
    const auto text = receipt.dump();
    update.bind(1, now_ms()).bind(2, std::string_view(text)).bind(3, std::string_view(receipt_digest(*this, id, text)));
    update.bind(4, *seq).run();
  }
  transaction.commit();
}

void Ledger::complete(std::string_view id, const nlohmann::json& receipt) {
  complete({{std::string(id), receipt}});
}

void Ledger::complete(const std::vector<std::pair<std::string, nlohmann::json>>& receipts) {
  const std::lock_guard lock(mutex_);
  Transaction transaction(*db_, "completing " + std::to_string(receipts.size()) + " request(s)");
  for (const auto& [id, receipt] : receipts) finish_locked(id, RequestStatus::kCompleted, "", receipt);
  transaction.commit();
}

void Ledger::fail(std::string_view id, const std::string& reason, const nlohmann::json& receipt) {
  if (reason.empty())
    throw LedgerError("ledger " + path_.string() + ": failing request " + std::string(id) + " needs a reason");
  finish(id, RequestStatus::kFailed, reason, receipt);
}

void Ledger::finish(std::string_view id, RequestStatus status, const std::string& reason,
                    const nlohmann::json& receipt) {
  const std::lock_guard lock(mutex_);
  Transaction transaction(*db_, std::string(status == RequestStatus::kCompleted ? "completing" : "failing") + " request " +
                                    std::string(id));
  finish_locked(id, status, reason, receipt);
  transaction.commit();
}

void Ledger::finish_locked(std::string_view id, RequestStatus status, const std::string& reason,
                           const nlohmann::json& receipt) {
  auto& db = *db_;
  const bool completing = status == RequestStatus::kCompleted;
  const std::string operation = std::string(completing ? "completing" : "failing") + " request " + std::string(id);
  const auto seq = seq_of_locked(id);
  if (!seq) throw LedgerError("ledger " + path_.string() + ": " + operation + ": no such request");
  const auto request = load_locked(*seq);
  if (request.status == status)
    throw LedgerError("ledger " + path_.string() + ": " + operation + ": it is already " +
                      std::string(to_string(status)) + "; " + (completing ? "completing" : "failing") +
                      " a request twice is refused");
  if (request.status != RequestStatus::kQueued && request.status != RequestStatus::kApplied)
    throw LedgerError("ledger " + path_.string() + ": " + operation + ": it is already " +
                      std::string(to_string(request.status)) + ", a final status");
  check_receipt(path_, request, receipt, !completing);

  // secure_delete=ON zeroes the bytes these NULLs replace; scrub() then clears the WAL's old copies.
  Statement update(db,
                   "UPDATE requests SET status = ?, completed_ms = ?, receipt = ?, receipt_digest = ?, error = ?, "
                   "subject = NULL, idempotency_key = NULL WHERE seq = ?",
                   operation);
  update.bind(1, to_string(status)).bind(2, now_ms());
  const auto text = receipt.is_null() ? std::nullopt : std::optional(receipt.dump());
  update.bind_optional(3, text);
  update.bind_optional(4, text ? std::optional(receipt_digest(*this, id, *text)) : std::nullopt);
  update.bind(5, std::string_view(reason)).bind(6, *seq).run();
  Statement forget(db, "UPDATE request_records SET record_id = NULL WHERE request_seq = ?", operation + " (its record ids)");
  forget.bind(1, *seq).run();
}

std::map<RequestStatus, std::int64_t> Ledger::counts() const {
  const std::lock_guard lock(mutex_);
  std::map<RequestStatus, std::int64_t> counts = {{RequestStatus::kQueued, 0},
                                                  {RequestStatus::kApplied, 0},
                                                  {RequestStatus::kCompleted, 0},
                                                  {RequestStatus::kFailed, 0}};
  Statement select(*db_, "SELECT status, COUNT(*) FROM requests GROUP BY status", "counting requests");
  while (select.step()) {
    const auto status = status_from(select.text(0));
    if (!status)
      throw LedgerError("ledger " + path_.string() + ": unknown status '" + select.text(0) +
                        "'; the file is damaged or from another program");
    counts[*status] = select.int64(1);
  }
  return counts;
}

ClearValues Ledger::clear_values() const {
  const std::lock_guard lock(mutex_);
  ClearValues out;
  Statement records(*db_,
                    "SELECT COUNT(*) FROM request_records r JOIN requests q ON q.seq = r.request_seq "
                    "WHERE r.record_id IS NOT NULL AND q.status IN ('completed', 'failed')",
                    "counting clear record ids");
  if (records.step()) out.finished_record_ids = records.int64(0);
  Statement requests(*db_,
                     "SELECT COUNT(*) FROM requests WHERE (subject IS NOT NULL OR idempotency_key IS NOT NULL) "
                     "AND status IN ('completed', 'failed')",
                     "counting clear subjects and keys");
  if (requests.step()) out.finished_subjects_or_keys = requests.int64(0);
  return out;
}

void Ledger::scrub() {
  const std::lock_guard lock(mutex_);
  Statement checkpoint(*db_, "PRAGMA wal_checkpoint(TRUNCATE)", "checkpointing the WAL (scrub)");
  if (!checkpoint.step() || checkpoint.int64(0) != 0)
    throw LedgerError("ledger " + path_.string() +
                      ": the WAL checkpoint could not complete because another connection is using the ledger, so "
                      "old copies of finished requests may remain in " + path_.string() +
                      "-wal; stop the other reader and call scrub again");
}

LedgerSettings Ledger::settings() const {
  const std::lock_guard lock(mutex_);
  const auto& db = *db_;
  const auto number = [&](const char* pragma) {
    try {
      return std::stoi(pragma_text(db, pragma));
    } catch (const std::exception&) {
      throw LedgerError("ledger " + path_.string() + ": PRAGMA " + pragma + " did not answer a number");
    }
  };
  LedgerSettings settings;
  settings.journal_mode = pragma_text(db, "journal_mode");
  settings.synchronous = number("synchronous");
  settings.secure_delete = number("secure_delete") == 1;
  settings.foreign_keys = number("foreign_keys") == 1;
  settings.busy_timeout_ms = number("busy_timeout");
  settings.schema_version = std::stoi(meta_value(*db_, "schema_version").value_or("0"));
  return settings;
}

}  // namespace lethe::storage
