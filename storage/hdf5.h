// storage/hdf5.h — RAII owners for HDF5 C API identifiers, and checked calls that turn
// HDF5's error stack into a StorageError naming the file and the operation.
#pragma once

#include <hdf5.h>

#include <string>
#include <string_view>
#include <utility>

#include "storage/error.h"

namespace lethe::storage::h5 {

// Owns one HDF5 identifier and closes it with Close on destruction. Move-only.
template <herr_t (*Close)(hid_t)>
class Owner {
 public:
  Owner() = default;
  explicit Owner(hid_t id) : id_(id) {}
  Owner(const Owner&) = delete;
  Owner& operator=(const Owner&) = delete;
  Owner(Owner&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Owner& operator=(Owner&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  ~Owner() { reset(); }

  [[nodiscard]] hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0) Close(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Closes a file. A close whose flush fails (a full disk, an I/O error) would leave the file half
// closed inside HDF5, whose exit handler then crashes on it (issue 14); so the file is flushed first,
// and when that fails its descriptor is pointed at an anonymous memory file, where the pending
// writes succeed, before it is closed. Only error paths get there, and their callers remove the
// half-written file (or, for an erasure in place, report it failed). Negative if the close fails;
// HDF5's own exit handler, which would crash on such a file, is off (storage/hdf5.cpp).
herr_t close_file(hid_t file);

using File = Owner<close_file>;
using Group = Owner<H5Gclose>;
using Dataset = Owner<H5Dclose>;
using Dataspace = Owner<H5Sclose>;
using Datatype = Owner<H5Tclose>;
using PropList = Owner<H5Pclose>;
using Attribute = Owner<H5Aclose>;

// Turns off HDF5's printing of error stacks to stderr; errors are reported through
// exceptions instead. Idempotent and thread-safe to call repeatedly.
void silence_error_printing();

// The innermost message of HDF5's current error stack ("" if none).
[[nodiscard]] std::string last_error_message();

// Throws StorageError("<what>: <HDF5's reason>") when status < 0; returns status otherwise.
// `what` should name the file and object, e.g. "reading 'features' in /data/x.h5".
template <typename T>
T check(T status, std::string_view what) {
  if (status < 0) throw StorageError(std::string(what) + ": " + last_error_message());
  return status;
}

// True when `path` is an HDF5 file (by signature), without raising errors.
[[nodiscard]] bool is_hdf5(const std::string& path);

// Opens an existing file (read-only or read-write); StorageError naming the path otherwise.
[[nodiscard]] File open_file(const std::string& path, bool writable);
// Creates (truncating) a file; StorageError naming the path otherwise.
[[nodiscard]] File create_file(const std::string& path);

// Attributes holding UTF-8 strings (JSON metadata lives in these).
void write_string_attribute(hid_t object, const std::string& name, const std::string& value);
[[nodiscard]] std::string read_string_attribute(hid_t object, const std::string& name);
[[nodiscard]] bool has_attribute(hid_t object, const std::string& name);

}  // namespace lethe::storage::h5
