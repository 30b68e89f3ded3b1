// storage/error.h — the exception every storage operation throws, with a kind where a caller must
// tell failures apart (never by matching the message). Messages name the file (and record or line
// where one applies) and say what to do.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace lethe::storage {

enum class StorageErrorKind {
  kIo,                   // the file system or a library failed; the default
  kNotFound,             // no such file, record, request or version
  kDamaged,              // a file that is not what it should be (format, checksum, content)
  kLocked,               // another process holds the job (storage/job_lock.h)
  kIdempotencyConflict,  // an idempotency key reused for a different request (storage/ledger.h)
  kRefused,              // an operation the data does not allow (e.g. erasing a public record)
  kNoSpace,              // the file system is full (ENOSPC, SQLITE_FULL): transient, retry once space is freed
};
[[nodiscard]] std::string_view to_string(StorageErrorKind kind);

class StorageError : public std::runtime_error {
 public:
  explicit StorageError(const std::string& message, StorageErrorKind kind = StorageErrorKind::kIo)
      : std::runtime_error(message), kind_(kind) {}
  StorageError(StorageErrorKind kind, const std::string& message) : StorageError(message, kind) {}
  [[nodiscard]] StorageErrorKind kind() const { return kind_; }

 private:
  StorageErrorKind kind_;
};

}  // namespace lethe::storage
