#include "trainer/error.h"

namespace lethe::trainer {

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput: return "invalid_input";
    case ErrorKind::kNotFound: return "not_found";
    case ErrorKind::kMismatch: return "mismatch";
    case ErrorKind::kConflict: return "conflict";
    case ErrorKind::kUnavailable: return "unavailable";
    case ErrorKind::kDamaged: return "damaged";
  }
  return "unknown";
}

}  // namespace lethe::trainer
