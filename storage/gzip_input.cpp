#include "storage/gzip_input.h"

#include <cerrno>
#include <climits>
#include <cstring>

#include "storage/error.h"

namespace lethe::storage {

namespace {
constexpr unsigned kBufferBytes = 1 << 18;  // zlib's default 8 KiB makes small reads dominate
}

GzipInput::GzipInput(std::filesystem::path path) : path_(std::move(path)) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path_, ec))
    throw StorageError("'" + path_.string() + "' does not exist or is not a regular file: check the path");
  file_ = gzopen(path_.c_str(), "rb");
  if (file_ == nullptr)
    throw StorageError("cannot open '" + path_.string() + "': " + std::strerror(errno) + " (check its permissions)");
  gzbuffer(file_, kBufferBytes);
}

GzipInput::~GzipInput() {
  if (file_ != nullptr) gzclose_r(file_);
}

void GzipInput::fail(const std::string& what) const {
  int code = Z_OK;
  const char* message = gzerror(file_, &code);
  std::string reason = (code == Z_ERRNO) ? std::strerror(errno) : (message && *message ? message : "unknown error");
  if (code == Z_BUF_ERROR || reason == "unexpected end of file")
    reason = "the gzip stream is truncated (unexpected end of file)";
  throw StorageError("'" + path_.string() + "' is damaged: " + reason + " while reading " + what +
                     " (after " + std::to_string(bytes_read_) + " decompressed bytes); download or copy it again");
}

size_t GzipInput::read_some(void* out, size_t size) {
  auto* bytes = static_cast<unsigned char*>(out);
  size_t done = 0;
  while (done < size) {
    const unsigned want = static_cast<unsigned>(std::min<size_t>(size - done, INT_MAX));
    const int got = gzread(file_, bytes + done, want);
    if (got < 0) fail("data");
    if (got == 0) {
      int code = Z_OK;
      gzerror(file_, &code);
      if (code != Z_OK) fail("data");
      break;
    }
    done += static_cast<size_t>(got);
  }
  bytes_read_ += done;
  return done;
}

void GzipInput::read_exact(void* out, size_t size, const std::string& what) {
  const size_t got = read_some(out, size);
  if (got != size)
    throw StorageError("'" + path_.string() + "' is truncated: it ends in the middle of " + what + " (" +
                       std::to_string(got) + " of " + std::to_string(size) +
                       " bytes present); download or copy it again");
}

bool GzipInput::read_line(std::string& line) {
  line.clear();
  char buffer[4096];
  while (true) {
    if (gzgets(file_, buffer, sizeof buffer) == nullptr) {
      int code = Z_OK;
      gzerror(file_, &code);
      if (code != Z_OK) fail("a line");
      break;
    }
    const size_t length = std::strlen(buffer);
    bytes_read_ += length;
    line.append(buffer, length);
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      if (!line.empty() && line.back() == '\r') line.pop_back();
      return true;
    }
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return !line.empty();
}

void GzipInput::expect_end(const std::string& after) {
  unsigned char extra = 0;
  const size_t got = read_some(&extra, 1);
  if (got != 0)
    throw StorageError("'" + path_.string() + "' has unexpected data after " + after +
                       ": its header and its size disagree; check that it is the right file");
}

}  // namespace lethe::storage
