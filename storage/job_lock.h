// storage/job_lock.h — one writer per job directory: `lethe serve`, `lethe delete --job` and
// `lethe retrain` each hold an exclusive advisory lock on <job_dir>/.lock while they run.
#pragma once

#include <filesystem>
#include <string>

namespace lethe::storage {

// Holds flock(LOCK_EX) on <job_dir>/.lock for its lifetime; the kernel drops it if the process
// dies, so a killed server never leaves the job locked. The file records the holder's pid and
// command so that the error given to a second writer says who holds it.
class JobLock {
 public:
  // Throws StorageError naming the holder when another process holds the lock, or when the
  // directory does not exist. `holder` is a short description ("lethe serve").
  JobLock(const std::filesystem::path& job_dir, const std::string& holder);
  ~JobLock();
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace lethe::storage
