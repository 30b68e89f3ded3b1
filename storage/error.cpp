#include "storage/error.h"

namespace lethe::storage {

std::string_view to_string(StorageErrorKind kind) {
  switch (kind) {
    case StorageErrorKind::kIo: return "io";
    case StorageErrorKind::kNotFound: return "not_found";
    case StorageErrorKind::kDamaged: return "damaged";
    case StorageErrorKind::kLocked: return "locked";
    case StorageErrorKind::kIdempotencyConflict: return "idempotency_conflict";
    case StorageErrorKind::kRefused: return "refused";
    case StorageErrorKind::kNoSpace: return "no_space";
  }
  return "unknown";
}

}  // namespace lethe::storage
