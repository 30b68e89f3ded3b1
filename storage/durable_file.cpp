#include "storage/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <set>
#include <vector>

#include "storage/error.h"

namespace lethe::storage {
namespace {

std::string errno_text() { return std::strerror(errno); }

// The kind of a failed system call, from errno: a full disk is transient and callers retry it.
StorageErrorKind errno_kind() { return errno == ENOSPC || errno == EDQUOT ? StorageErrorKind::kNoSpace : StorageErrorKind::kIo; }

// A file descriptor closed on scope exit.
class Fd {
 public:
  Fd(const std::filesystem::path& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw StorageError(errno_kind(), "cannot open '" + path.string() + "': " + errno_text());
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { ::close(fd_); }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

void fsync_fd(const Fd& fd, const std::filesystem::path& path) {
  if (::fsync(fd.get()) != 0)
    throw StorageError(errno_kind(), "fsync of '" + path.string() + "' failed: " + errno_text() +
                       " (the disk may be full or failing; nothing was committed)");
}

// What a non-regular file is, for messages ("a character device"); nullopt when `path` does not
// exist or is a regular file. lstat: a symlink is reported as one, not followed.
std::optional<std::string> special_file_kind(const std::filesystem::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    throw StorageError(errno_kind(), "cannot stat '" + path.string() + "': " + errno_text());
  }
  if (S_ISREG(st.st_mode)) return std::nullopt;
  if (S_ISLNK(st.st_mode)) return "a symlink";
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  return "not a regular file";
}

void refuse_special_file(const std::filesystem::path& path, const std::string& remedy) {
  if (const auto kind = special_file_kind(path))
    throw StorageError(StorageErrorKind::kRefused, "refusing to replace '" + path.string() + "': it is " + *kind +
                                                       ", not a regular file; " + remedy + ". Nothing was written");
}

}  // namespace

void check_output_path(const std::filesystem::path& path, ExistingOutput existing, std::string_view force_flag) {
  const std::string other_path = "name a new regular file as the output";
  refuse_special_file(path, other_path + " (lethe never replaces links, devices or directories)");
  refuse_special_file(temp_path_for(path), "remove it: lethe writes '" + path.string() + "' there first");
  std::error_code ec;
  if (existing == ExistingOutput::kRefuse && std::filesystem::exists(path, ec))
    throw StorageError(StorageErrorKind::kRefused,
                       "refusing to overwrite '" + path.string() + "': the file exists; pass " + std::string(force_flag) +
                           " to replace it (atomically, once the new file is complete), or " + other_path +
                           ". Nothing was written");
}

std::filesystem::path resolve_data_file(const std::filesystem::path& path) {
  std::error_code ec;
  auto real = std::filesystem::canonical(path, ec);
  if (ec == std::errc::no_such_file_or_directory)
    throw StorageError(StorageErrorKind::kNotFound, "'" + path.string() + "' does not exist: check the path");
  if (ec) throw StorageError("cannot resolve '" + path.string() + "': " + ec.message() + " (check the path)");
  return real;
}

std::filesystem::path temp_path_for(const std::filesystem::path& path) {
  return std::filesystem::path(path.string() + ".tmp");
}

void fsync_file(const std::filesystem::path& path) {
  Fd fd(path, O_RDONLY);
  fsync_fd(fd, path);
}

void fsync_directory(const std::filesystem::path& dir) {
  Fd fd(dir.empty() ? std::filesystem::path(".") : dir, O_RDONLY | O_DIRECTORY);
  fsync_fd(fd, dir);
}

void write_file_durably(const std::filesystem::path& path, std::string_view content) {
  const auto tmp = temp_path_for(path);
  {
    Fd fd(tmp, O_WRONLY | O_CREAT | O_TRUNC);
    for (std::size_t done = 0; done < content.size();) {
      const auto n = ::write(fd.get(), content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const auto kind = errno_kind();
        const auto error = errno_text();
        ::unlink(tmp.c_str());
        throw StorageError(kind, "cannot write '" + tmp.string() + "': " + error + " (the old '" + path.string() +
                           "' is unchanged; free space or fix permissions and retry)");
      }
      done += static_cast<std::size_t>(n);
    }
  }
  commit_file(tmp, path);
}

void commit_file(const std::filesystem::path& written, const std::filesystem::path& target) {
  try {
    refuse_special_file(target, "name a regular file (lethe never replaces links, devices or directories)");
    fault_injection::on_commit(target);
    fsync_file(written);
    if (::rename(written.c_str(), target.c_str()) != 0)
      throw StorageError("cannot rename '" + written.string() + "' to '" + target.string() + "': " + errno_text());
  } catch (...) {
    ::unlink(written.c_str());  // never committed: the old target stays as it was
    throw;
  }
  fsync_directory(target.parent_path());
}

namespace fault_injection {
namespace {
std::atomic<int> commits_until_failure{0};
}  // namespace

void fail_nth_commit(int nth) { commits_until_failure.store(nth); }

void on_commit(const std::filesystem::path& target) {
  if (commits_until_failure.load(std::memory_order_relaxed) == 0) return;
  if (commits_until_failure.fetch_sub(1) == 1) {
    throw StorageError(StorageErrorKind::kNoSpace, "cannot commit '" + target.string() +
                       "': No space left on device (injected by a test: storage/durable_file.h fault_injection)");
  }
}
}  // namespace fault_injection

namespace {

// Overwrites every byte of `path` with zeros; `sync`: and fsyncs it.
void zero_file(const std::filesystem::path& path, bool sync) {
  Fd fd(path, O_WRONLY);
  const off_t size = ::lseek(fd.get(), 0, SEEK_END);
  if (size < 0) throw StorageError("cannot size '" + path.string() + "': " + errno_text());
  std::vector<char> zeros(1 << 20, 0);
  off_t done = 0;
  while (done < size) {
    const size_t n = static_cast<size_t>(std::min<off_t>(size - done, static_cast<off_t>(zeros.size())));
    const ssize_t w = ::pwrite(fd.get(), zeros.data(), n, done);
    if (w <= 0) throw StorageError("cannot overwrite '" + path.string() + "': " + errno_text());
    done += w;
  }
  if (sync) fsync_fd(fd, path);
}

}  // namespace

void shred_file(const std::filesystem::path& path) { shred_files({path}); }

void shred_files(const std::vector<std::filesystem::path>& paths) {
  if (paths.empty()) return;
  // Several files: overwrite them all, then one syncfs() flushes them together (one device flush
  // instead of one per file: a deletion batch may purge dozens of checkpoints).
  const bool together = paths.size() > 1;
  for (const auto& path : paths) zero_file(path, !together);
  if (together) {
    // One syncfs per file system the files live on (normally one: the job directory's).
    std::set<dev_t> synced;
    for (const auto& path : paths) {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) throw StorageError("cannot stat '" + path.string() + "': " + errno_text());
      if (!synced.insert(st.st_dev).second) continue;
      Fd fd(path, O_RDONLY);
      if (::syncfs(fd.get()) != 0)
        throw StorageError("syncfs after overwriting '" + path.string() + "' failed: " + errno_text() +
                           " (the disk may be full or failing; the files are still in place, retry)");
    }
  }
  std::set<std::filesystem::path> directories;
  for (const auto& path : paths) {
    if (::unlink(path.c_str()) != 0) throw StorageError("cannot remove '" + path.string() + "': " + errno_text());
    directories.insert(path.parent_path());
  }
  for (const auto& dir : directories) fsync_directory(dir);  // once per directory, not per file
}

}  // namespace lethe::storage
