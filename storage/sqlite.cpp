#include "storage/sqlite.h"

#include <utility>

#include "storage/error.h"

namespace lethe::storage::sqlite {

// ---- Database ----

Database::Database(const std::filesystem::path& path, bool read_only, std::string what, Raise raise, Hint hint)
    : path_(path), what_(std::move(what)), raise_(std::move(raise)), hint_(std::move(hint)) {
  const int rc = sqlite3_open_v2(path.c_str(), &db_,
                                 (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    raise_message(what_ + ": cannot open: " + message + "; check that the path is a readable and writable file", rc);
  }
  sqlite3_extended_result_codes(db_, 1);
}

Database::~Database() { sqlite3_close_v2(db_); }

void Database::raise(const std::string& operation, int rc) const {
  std::string message = what_ + ": " + operation + " failed: " + sqlite3_errmsg(db_);
  if (hint_) message += hint_(rc);
  raise_message(message, rc);
}

void Database::raise_message(const std::string& message, int rc) const {
  if (raise_) raise_(message, rc);
  throw StorageError(message);  // the default, and the fallback should a Raise return
}

void Database::exec(const std::string& sql, const std::string& operation) {
  char* raw = nullptr;
  const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &raw);
  sqlite3_free(raw);  // errmsg still holds the text raise() reports
  if (rc != SQLITE_OK) raise(operation, rc);
}

// ---- Statement ----

Statement::Statement(const Database& db, const char* sql, std::string operation)
    : db_(db), operation_(std::move(operation)) {
  const int rc = sqlite3_prepare_v2(db.handle(), sql, -1, &stmt_, nullptr);
  if (rc != SQLITE_OK) db.raise(operation_ + " (preparing)", rc);
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

Statement& Statement::bind(int index, std::string_view text) {
  check(sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT));
  return *this;
}

Statement& Statement::bind_optional(int index, const std::optional<std::string>& text) {
  if (text) return bind(index, std::string_view(*text));
  check(sqlite3_bind_null(stmt_, index));
  return *this;
}

Statement& Statement::bind(int index, std::int64_t value) {
  check(sqlite3_bind_int64(stmt_, index, value));
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view bytes) {
  check(sqlite3_bind_blob(stmt_, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT));
  return *this;
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  db_.raise(operation_, rc);
}

void Statement::run() {
  while (step()) {
  }
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

bool Statement::is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

std::int64_t Statement::int64(int column) const { return sqlite3_column_int64(stmt_, column); }

std::string Statement::text(int column) const {
  const auto* data = sqlite3_column_blob(stmt_, column);  // raw bytes of TEXT or BLOB
  const int size = sqlite3_column_bytes(stmt_, column);
  return data == nullptr ? std::string() : std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

std::optional<std::string> Statement::optional_text(int column) const {
  if (is_null(column)) return std::nullopt;
  return text(column);
}

void Statement::check(int rc) const {
  if (rc != SQLITE_OK) db_.raise(operation_ + " (binding)", rc);
}

// ---- Transaction ----

Transaction::Transaction(Database& db, std::string operation) : db_(db), operation_(std::move(operation)) {
  db_.exec("BEGIN IMMEDIATE", operation_ + " (begin)");
}

Transaction::~Transaction() {
  if (!done_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void Transaction::commit() {
  db_.exec("COMMIT", operation_ + " (commit)");
  done_ = true;
}

}  // namespace lethe::storage::sqlite
