#include "storage/hdf5.h"

#include <filesystem>
#include <mutex>
#include <vector>

namespace lethe::storage::h5 {

void silence_error_printing() {
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
  return message.empty() ? "unknown HDF5 error" : message;
}

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
  PropList access(check(H5Pcreate(H5P_FILE_ACCESS), "opening '" + path + "'"));
  check(H5Pset_file_locking(access.get(), false, true), "opening '" + path + "'");
  File file(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, access.get()));
  if (!file)
    throw StorageError("cannot open '" + path + "'" + (writable ? " for writing" : "") + ": " +
                       last_error_message() + " (is another process writing it?)");
  return file;
}

File create_file(const std::string& path) {
  silence_error_printing();
  PropList access(check(H5Pcreate(H5P_FILE_ACCESS), "creating '" + path + "'"));
  check(H5Pset_file_locking(access.get(), false, true), "creating '" + path + "'");  // as open_file
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
