#include "storage/durable_file.h"

#include <fcntl.h>
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

// Overwrites every byte of `path` with zeros and fsyncs it.
void zero_file(const std::filesystem::path& path) {
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
  fsync_fd(fd, path);
}

}  // namespace

void shred_file(const std::filesystem::path& path) { shred_files({path}); }

void shred_files(const std::vector<std::filesystem::path>& paths) {
  std::set<std::filesystem::path> directories;
  for (const auto& path : paths) {
    zero_file(path);
    if (::unlink(path.c_str()) != 0) throw StorageError("cannot remove '" + path.string() + "': " + errno_text());
    directories.insert(path.parent_path());
  }
  for (const auto& dir : directories) fsync_directory(dir);  // once per directory, not per file
}

}  // namespace lethe::storage
