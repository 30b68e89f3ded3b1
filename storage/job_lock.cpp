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

std::string read_holder(int fd) {
  char buffer[256] = {};
  const auto n = ::pread(fd, buffer, sizeof buffer - 1, 0);
  if (n <= 0) return "another process";
  std::string text(buffer, static_cast<std::size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

std::filesystem::path JobLock::path(const std::filesystem::path& job_dir, Kind kind) {
  return job_dir / (kind == Kind::kWriter ? ".lock" : ".retrain.lock");
}

JobLock::JobLock(const std::filesystem::path& job_dir, const std::string& holder, Kind kind) {
  if (!std::filesystem::is_directory(job_dir)) {
    throw StorageError(job_dir.string() + " is not a job directory (it does not exist); train a job there first");
  }
  const auto file = path(job_dir, kind);
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd_ < 0) {
    const int error = errno;
    throw StorageError("cannot open " + file.string() + ": " + std::strerror(error) +
                       (error == ELOOP ? " (it is a symbolic link; remove it: Lethe recreates the lock file)" : ""));
  }
  struct stat info {};
  if (::fstat(fd_, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    throw StorageError(file.string() + " is not a regular file; remove it (Lethe recreates the lock file)");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const auto other = read_holder(fd_);
    ::close(fd_);
    fd_ = -1;
    if (error == EWOULDBLOCK && kind == Kind::kRetrain) {
      throw StorageError(StorageErrorKind::kLocked, "a retrain of " + job_dir.string() + " is already running: " + other +
                                                        "; wait for it to finish (`lethe status --job " +
                                                        job_dir.string() + "` shows it) and try again");
    }
    if (error == EWOULDBLOCK) {
      throw StorageError(StorageErrorKind::kLocked, job_dir.string() + " is in use by " + other +
                         "; only one of `lethe serve`, `lethe delete --job` and `lethe train` may write a job at a "
                         "time: stop it (or send deletions to its HTTP service) and try again");
    }
    throw StorageError("cannot lock " + file.string() + ": " + std::strerror(error));
  }
  const auto text = holder + " (pid " + std::to_string(::getpid()) + ")\n";
  // Failing here would only lose the holder's description, not the lock: not worth an error.
  if (::ftruncate(fd_, 0) == 0) (void)::pwrite(fd_, text.data(), text.size(), 0);
}

std::optional<std::string> JobLock::holder(const std::filesystem::path& job_dir, Kind kind) {
  const auto file = path(job_dir, kind);
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) return std::nullopt;  // never taken
    throw StorageError("cannot open " + file.string() + ": " + std::strerror(error));
  }
  std::optional<std::string> out;
  if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
    ::flock(fd, LOCK_UN);
  } else if (errno == EWOULDBLOCK) {
    out = read_holder(fd);
  } else {
    const int error = errno;
    ::close(fd);
    throw StorageError("cannot probe " + file.string() + ": " + std::strerror(error));
  }
  ::close(fd);
  return out;
}

JobLock::~JobLock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace lethe::storage
