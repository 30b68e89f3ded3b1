// storage/error.h — the exception every storage operation throws.
// Messages name the file (and record or line where one applies) and say what to do.
#pragma once

#include <stdexcept>
#include <string>

namespace lethe::storage {

class StorageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace lethe::storage
