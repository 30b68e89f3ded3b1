// storage/job_lock.h — one writer per job directory: `lethe serve`, `lethe delete --job` and
// `lethe train` each hold an exclusive advisory lock on <job_dir>/.lock while they run; `lethe
// retrain` holds <job_dir>/.retrain.lock (one retrain at a time) and trains beside a writer.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace lethe::storage {

// Holds flock(LOCK_EX) on the job directory (kWriter) or on <job_dir>/retrain (kRetrain) for its
// lifetime; the kernel drops it if the process dies, so a killed server never leaves the job locked.
// Beside it, <job_dir>/.lock (.retrain.lock) records the holder's pid and command so that the error
// given to a second writer says who holds it; removing that file does not release the lock.
class JobLock {
 public:
  enum class Kind {
    kWriter,   // <job_dir>/.lock: the one process that changes the job's models, manifest and ledger
    kRetrain,  // <job_dir>/.retrain.lock: the one retrain running for the job
  };

  // Throws StorageError (kLocked) naming the holder when another process holds the lock, or
  // StorageError when the directory does not exist or the lock file is not a regular file (a
  // symbolic link is refused, never followed). `holder` is a short description ("lethe serve").
  JobLock(const std::filesystem::path& job_dir, const std::string& holder, Kind kind = Kind::kWriter);

  // Who holds the lock ("lethe retrain (pid 42)"), or nullopt when nobody does. Writes nothing and
  // creates nothing (for `lethe status` and the service's checks); it holds a shared lock for the
  // instant of the probe, so a process taking the lock at that very instant may be refused once.
  [[nodiscard]] static std::optional<std::string> holder(const std::filesystem::path& job_dir, Kind kind);

  // The holder description file's path.
  [[nodiscard]] static std::filesystem::path path(const std::filesystem::path& job_dir, Kind kind);
  // The directory whose flock is the lock.
  [[nodiscard]] static std::filesystem::path locked_directory(const std::filesystem::path& job_dir, Kind kind);
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;

 private:
  int dir_fd_ = -1;
};

// A dataset file changes only through the job that trains on it: the job's writer (`lethe serve`,
// `lethe delete --job`) holds flock(LOCK_SH) on it for as long as it runs; `lethe erase` and
// `lethe compact` take LOCK_EX and are refused (kLocked) meanwhile. Readers take nothing.
class DatasetLock {
 public:
  enum class Mode { kJobWriter, kDirectEdit };
  // `dataset` is resolved (a symlink locks the real file). StorageError kLocked when the other mode holds it.
  DatasetLock(const std::filesystem::path& dataset, Mode mode);
  ~DatasetLock();
  DatasetLock(const DatasetLock&) = delete;
  DatasetLock& operator=(const DatasetLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace lethe::storage
