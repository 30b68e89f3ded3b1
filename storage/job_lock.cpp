#include "storage/job_lock.h"

#include <fcntl.h>
#include <sys/file.h>
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

JobLock::JobLock(const std::filesystem::path& job_dir, const std::string& holder) {
  if (!std::filesystem::is_directory(job_dir)) {
    throw StorageError(job_dir.string() + " is not a job directory (it does not exist); train a job there first");
  }
  const auto path = job_dir / ".lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) throw StorageError("cannot open " + path.string() + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const auto other = read_holder(fd_);
    ::close(fd_);
    fd_ = -1;
    if (error == EWOULDBLOCK) {
      throw StorageError(StorageErrorKind::kLocked, job_dir.string() + " is in use by " + other +
                         "; only one of `lethe serve`, `lethe delete --job` and `lethe retrain` may write a job at a "
                         "time: stop it (or send deletions to its HTTP service) and try again");
    }
    throw StorageError("cannot lock " + path.string() + ": " + std::strerror(error));
  }
  const auto text = holder + " (pid " + std::to_string(::getpid()) + ")\n";
  // Failing here would only lose the holder's description, not the lock: not worth an error.
  if (::ftruncate(fd_, 0) == 0) (void)::pwrite(fd_, text.data(), text.size(), 0);
}

JobLock::~JobLock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace lethe::storage
