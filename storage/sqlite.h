// storage/sqlite.h — RAII owners for the SQLite C API: a connection, a prepared statement and a
// write transaction, whose failures raise an exception naming the database, the operation and SQLite's reason.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace lethe::storage::sqlite {

// Throws for a failed SQLite call, given the whole message and SQLite's (extended) result code; it
// must not return. The default throws StorageError(message).
using Raise = std::function<void(const std::string& message, int rc)>;
// "; what to do" appended to the message of a failed call with result code `rc`, or "".
using Hint = std::function<std::string(int rc)>;

// One connection (SQLITE_OPEN_FULLMUTEX, extended result codes on); closed on destruction.
// Messages read "<what>: <operation> failed: <SQLite's message><hint(rc)>", with `what` naming the
// database (e.g. "cache /data/x.sqlite"); an open that fails raises
// "<what>: cannot open: <SQLite's message>; check that the path is a readable and writable file".
class Database {
 public:
  // Opens the existing file at `path`, read-write or read-only (SQLite creates nothing here).
  Database(const std::filesystem::path& path, bool read_only, std::string what, Raise raise = {}, Hint hint = {});
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  [[nodiscard]] sqlite3* handle() const { return db_; }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  // Raises the failure of `operation` (result code `rc`) with SQLite's current message.
  [[noreturn]] void raise(const std::string& operation, int rc) const;

  // Runs `sql` (one or more statements, no results); raises naming `operation` on failure.
  void exec(const std::string& sql, const std::string& operation);

 private:
  [[noreturn]] void raise_message(const std::string& message, int rc) const;

  std::filesystem::path path_;
  std::string what_;
  Raise raise_;
  Hint hint_;
  sqlite3* db_ = nullptr;
};

// One prepared statement; bind parameters are 1-based, columns 0-based. Failures raise through
// the Database, naming `operation`.
class Statement {
 public:
  Statement(const Database& db, const char* sql, std::string operation);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::string_view text);
  Statement& bind_optional(int index, const std::optional<std::string>& text);  // NULL when unset
  Statement& bind(int index, std::int64_t value);
  Statement& bind_blob(int index, std::string_view bytes);

  // True when a row is ready, false when done.
  bool step();
  // Steps to the end, ignoring rows.
  void run();
  // Ready to run again, with the bindings cleared.
  void reset();

  [[nodiscard]] bool is_null(int column) const;
  [[nodiscard]] std::int64_t int64(int column) const;
  // The raw bytes of a TEXT or BLOB column ("" for NULL).
  [[nodiscard]] std::string text(int column) const;
  [[nodiscard]] std::optional<std::string> optional_text(int column) const;

 private:
  void check(int rc) const;

  const Database& db_;
  std::string operation_;
  sqlite3_stmt* stmt_ = nullptr;
};

// BEGIN IMMEDIATE (takes the write lock up front, so a read-then-write never fails half way);
// rolls back unless committed.
class Transaction {
 public:
  Transaction(Database& db, std::string operation);
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit();

 private:
  Database& db_;
  std::string operation_;
  bool done_ = false;
};

}  // namespace lethe::storage::sqlite
