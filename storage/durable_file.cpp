#include "storage/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <set>
#include <vector>

#include "storage/error.h"

namespace lethe::storage {
namespace {

std::string errno_text() { return std::strerror(errno); }

// A file descriptor closed on scope exit.
class Fd {
 public:
  Fd(const std::filesystem::path& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC)) {
    if (fd_ < 0) throw StorageError("cannot open '" + path.string() + "': " + errno_text());
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
    throw StorageError("fsync of '" + path.string() + "' failed: " + errno_text() +
                       " (the disk may be full or failing; nothing was committed)");
}

}  // namespace

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

void commit_file(const std::filesystem::path& written, const std::filesystem::path& target) {
  fsync_file(written);
  if (::rename(written.c_str(), target.c_str()) != 0)
    throw StorageError("cannot rename '" + written.string() + "' to '" + target.string() + "': " + errno_text());
  fsync_directory(target.parent_path());
}

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
