#include "storage/hdf5.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <vector>

namespace lethe::storage::h5 {

namespace {

// HDF5's exit handler closes every file still open, and crashes on one whose close failed (a flush
// on a full disk: issue 14, `lethe train` exiting 139). Lethe closes, flushes and fsyncs every file
// it means to keep before it returns (RAII owners, explicit flushes), so nothing depends on that
// handler: it is turned off before the library's first use, at static initialization.
const bool kNoExitHandler = [] {
  (void)H5dont_atexit();
  return true;
}();

}  // namespace

void silence_error_printing() {
  (void)kNoExitHandler;
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

std::string last_error_message() {
  std::string message;
  H5Ewalk2(
      // Upward starts at the most specific frame (e.g. "data error detected by Fletcher32
      // checksum"), which the API-level "can't read data" hides.
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
        auto* text = static_cast<std::string*>(out);
        if (n == 0 && err->desc) *text = err->desc;
        return 0;
      },
      &message);
  H5Eclear2(H5E_DEFAULT);
  std::replace(message.begin(), message.end(), '\n', ' ');  // one-line errors (the file driver's text has a newline)
  return message.empty() ? "unknown HDF5 error" : message;
}

herr_t close_file(hid_t file) {
  // Flush first: a flush that fails leaves the file intact (a failed H5Fclose does not: the id stays
  // but its file is half torn down, and HDF5's exit handler crashes on it).
  if (H5Fflush(file, H5F_SCOPE_LOCAL) >= 0) return H5Fclose(file);
  H5Eclear2(H5E_DEFAULT);
  void* handle = nullptr;
  const int sink = ::memfd_create("lethe-discarded-hdf5", MFD_CLOEXEC);
  if (sink >= 0 && H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) >= 0 && handle != nullptr) {
    const int fd = *static_cast<int*>(handle);  // the sec2 driver's descriptor
    (void)::dup3(sink, fd, O_CLOEXEC);          // the pending writes now go to memory, and succeed
  }
  if (sink >= 0) ::close(sink);
  const herr_t closed = H5Fclose(file);
  H5Eclear2(H5E_DEFAULT);
  return closed;
}

namespace {

// The file access properties of every file lethe opens or creates: no HDF5 file lock (see
// open_file), and a strong close degree, so that closing a file closes any object whose own close
// failed on an error path instead of leaving the file open behind it.
PropList file_access(const std::string& what) {
  PropList access(check(H5Pcreate(H5P_FILE_ACCESS), what));
  check(H5Pset_file_locking(access.get(), false, true), what);
  check(H5Pset_fclose_degree(access.get(), H5F_CLOSE_STRONG), what);
  return access;
}

}  // namespace

bool is_hdf5(const std::string& path) {
  silence_error_printing();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  const htri_t result = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  return result > 0;
}

File open_file(const std::string& path, bool writable) {
  silence_error_printing();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw StorageError("'" + path + "' does not exist: check the path");
  if (!is_hdf5(path))
    throw StorageError("'" + path + "' is not an HDF5 file: expected a file written by lethe");
  // No HDF5 file lock: a retrain reads a job's dataset for minutes while the service erases rows
  // in it (rewriting existing bytes in place), which HDF5's lock would refuse one way or the other.
  // Writers of a job's files are serialized by the job lock (storage/job_lock.h); ingest and
  // compact write new files and rename them. One setting for every open: HDF5 refuses to open a
  // file twice in one process with different locking.
  PropList access = file_access("opening '" + path + "'");
  File file(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, access.get()));
  if (!file)
    throw StorageError("cannot open '" + path + "'" + (writable ? " for writing" : "") + ": " +
                       last_error_message() + " (is another process writing it?)");
  return file;
}

File create_file(const std::string& path) {
  silence_error_printing();
  PropList access = file_access("creating '" + path + "'");  // as open_file
  File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()));
  if (!file)
    throw StorageError("cannot create '" + path + "': " + last_error_message() +
                       " (check that the directory exists and is writable, and the disk has space)");
  return file;
}

void write_string_attribute(hid_t object, const std::string& name, const std::string& value) {
  Datatype type(check(H5Tcopy(H5T_C_S1), "copying string type"));
  check(H5Tset_size(type.get(), value.empty() ? 1 : value.size()), "sizing string type");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "setting string charset");
  Dataspace space(check(H5Screate(H5S_SCALAR), "creating scalar dataspace"));
  if (H5Aexists(object, name.c_str()) > 0) check(H5Adelete(object, name.c_str()), "replacing attribute '" + name + "'");
  Attribute attr(check(H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                       "creating attribute '" + name + "'"));
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  check(H5Awrite(attr.get(), type.get(), padded.data()), "writing attribute '" + name + "'");
}

std::string read_string_attribute(hid_t object, const std::string& name) {
  Attribute attr(check(H5Aopen(object, name.c_str(), H5P_DEFAULT), "opening attribute '" + name + "'"));
  Datatype stored(check(H5Aget_type(attr.get()), "reading type of attribute '" + name + "'"));
  if (H5Tget_class(stored.get()) != H5T_STRING)
    throw StorageError("attribute '" + name + "' is not a string");
  if (H5Tis_variable_str(stored.get()) > 0)
    throw StorageError("attribute '" + name + "' is a variable-length string; lethe writes fixed-length ones");
  const size_t size = H5Tget_size(stored.get());
  std::vector<char> buffer(size + 1, '\0');
  check(H5Aread(attr.get(), stored.get(), buffer.data()), "reading attribute '" + name + "'");
  std::string value(buffer.data(), size);
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

bool has_attribute(hid_t object, const std::string& name) {
  return check(H5Aexists(object, name.c_str()), "looking up attribute '" + name + "'") > 0;
}

}  // namespace lethe::storage::h5
