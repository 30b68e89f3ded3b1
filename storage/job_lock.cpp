#include "storage/job_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "storage/error.h"

namespace lethe::storage {

namespace {

// The holder's description ("lethe serve (pid 42)"), written by the holder beside the lock.
std::string read_holder(const std::filesystem::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return "another process (its description " + file.string() + " was removed)";
  char buffer[256] = {};
  const auto n = ::pread(fd, buffer, sizeof buffer - 1, 0);
  ::close(fd);
  if (n <= 0) return "another process";
  std::string text(buffer, static_cast<std::size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

std::filesystem::path JobLock::path(const std::filesystem::path& job_dir, Kind kind) {
  return job_dir / (kind == Kind::kWriter ? ".lock" : ".retrain.lock");
}

std::filesystem::path JobLock::locked_directory(const std::filesystem::path& job_dir, Kind kind) {
  return kind == Kind::kWriter ? job_dir : job_dir / "retrain";
}

JobLock::JobLock(const std::filesystem::path& job_dir, const std::string& holder, Kind kind) {
  if (!std::filesystem::is_directory(job_dir)) {
    throw StorageError(job_dir.string() + " is not a job directory (it does not exist); train a job there first");
  }
  const auto file = path(job_dir, kind);
  // The description file must not be a link or a device: refuse before locking anything.
  struct stat link {};
  if (::lstat(file.c_str(), &link) == 0 && !S_ISREG(link.st_mode)) {
    throw StorageError(StorageErrorKind::kRefused,
                       file.string() + (S_ISLNK(link.st_mode) ? " is a symbolic link" : " is not a regular file") +
                           "; remove it (Lethe recreates the lock file)");
  }
  // The lock is held on the directory, not on the file: removing the file (a natural reaction to
  // "in use") cannot let a second writer in, and a directory is not replaced while it holds a job.
  const auto directory = locked_directory(job_dir, kind);
  std::error_code ignored;
  if (kind == Kind::kRetrain) std::filesystem::create_directories(directory, ignored);
  dir_fd_ = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  if (dir_fd_ < 0) throw StorageError("cannot open " + directory.string() + " to lock it: " + std::strerror(errno));
  if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(dir_fd_);
    dir_fd_ = -1;
    const auto other = read_holder(file);
    if (error == EWOULDBLOCK && kind == Kind::kRetrain) {
      throw StorageError(StorageErrorKind::kLocked, "a retrain of " + job_dir.string() + " is already running: " + other +
                                                        "; wait for it to finish (`lethe status --job " +
                                                        job_dir.string() + "` shows it) and try again");
    }
    if (error == EWOULDBLOCK) {
      throw StorageError(StorageErrorKind::kLocked, job_dir.string() + " is in use by " + other +
                         "; only one of `lethe serve`, `lethe delete --job` and `lethe train` may write a job at a "
                         "time: stop it (or send deletions to its HTTP service) and try again (removing " +
                         file.filename().string() + " does not release the lock)");
    }
    throw StorageError("cannot lock " + directory.string() + ": " + std::strerror(error));
  }
  // Only the holder writes the description, after taking the lock; never through a link.
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0) {
    const auto text = holder + " (pid " + std::to_string(::getpid()) + ")\n";
    struct stat info {};
    // Failing here only loses the holder's description, not the lock: not worth an error.
    if (::fstat(fd, &info) == 0 && S_ISREG(info.st_mode) && ::ftruncate(fd, 0) == 0) {
      (void)::pwrite(fd, text.data(), text.size(), 0);
    }
    ::close(fd);
  }
}

std::optional<std::string> JobLock::holder(const std::filesystem::path& job_dir, Kind kind) {
  const auto directory = locked_directory(job_dir, kind);
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) return std::nullopt;  // never taken (a retrain's directory is created by its lock)
    throw StorageError("cannot open " + directory.string() + ": " + std::strerror(error));
  }
  std::optional<std::string> out;
  if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
    ::flock(fd, LOCK_UN);
  } else if (errno == EWOULDBLOCK) {
    out = read_holder(path(job_dir, kind));
  } else {
    const int error = errno;
    ::close(fd);
    throw StorageError("cannot probe " + directory.string() + ": " + std::strerror(error));
  }
  ::close(fd);
  return out;
}

JobLock::~JobLock() {
  if (dir_fd_ >= 0) {
    ::flock(dir_fd_, LOCK_UN);
    ::close(dir_fd_);
  }
}

DatasetLock::DatasetLock(const std::filesystem::path& dataset, Mode mode) {
  fd_ = ::open(dataset.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    const int error = errno;
    throw StorageError(error == ENOENT ? StorageErrorKind::kNotFound : StorageErrorKind::kIo,
                       "cannot open " + dataset.string() + " to lock it: " + std::strerror(error));
  }
  if (::flock(fd_, (mode == Mode::kJobWriter ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0) return;
  const int error = errno;
  ::close(fd_);
  fd_ = -1;
  if (error != EWOULDBLOCK) throw StorageError("cannot lock " + dataset.string() + ": " + std::strerror(error));
  if (mode == Mode::kJobWriter) {
    throw StorageError(StorageErrorKind::kLocked, dataset.string() + " is being changed by `lethe erase` or `lethe compact`; "
                                                                     "let it finish and start again");
  }
  throw StorageError(StorageErrorKind::kLocked,
                     dataset.string() + " is the dataset of a job whose writer is running (`lethe serve` or `lethe "
                                        "delete --job`): delete its records through that job (`lethe delete --server URL "
                                        "--record ID` or POST /v1/deletions), which makes every model forget them "
                                        "before it erases their bytes");
}

DatasetLock::~DatasetLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the flock
}

}  // namespace lethe::storage
