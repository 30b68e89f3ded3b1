// storage/job_lock.h — one writer per job directory: `lethe serve`, `lethe delete --job` and
// `lethe train` each hold an exclusive advisory lock on <job_dir>/.lock while they run; `lethe
// retrain` holds <job_dir>/.retrain.lock (one retrain at a time) and trains beside a writer.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace lethe::storage {

// Holds flock(LOCK_EX) on <job_dir>/.lock for its lifetime; the kernel drops it if the process
// dies, so a killed server never leaves the job locked. The file records the holder's pid and
// command so that the error given to a second writer says who holds it.
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

  // The lock file's path.
  [[nodiscard]] static std::filesystem::path path(const std::filesystem::path& job_dir, Kind kind);
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace lethe::storage
