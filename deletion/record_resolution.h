// deletion/record_resolution.h — what a deletion request names, record by record: which rows of the
// job's dataset, and why a named record cannot be deleted (unknown, public, already erased).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "deletion/request.h"
#include "storage/dataset.h"

namespace lethe::deletion {

enum class RecordOutcome {
  kDelete,         // live, not public: every model that saw it forgets it, its bytes are erased
  kUnknown,        // no such id in the dataset (or a subject with no records)
  kPublic,         // public records pretrained the frozen backbone: refused (DESIGN.md §2)
  kAlreadyErased,  // erased by an earlier request: nothing left to do
};
[[nodiscard]] std::string_view to_string(RecordOutcome outcome);
// Why the outcome is what it is, for the receipt ("" for kDelete).
[[nodiscard]] std::string_view reason(RecordOutcome outcome);

struct ResolvedRecord {
  std::string id;
  RecordOutcome outcome = RecordOutcome::kUnknown;
  std::optional<std::uint64_t> row;  // set unless unknown
};

// The records of `request`. For a subject, its live records (each public one reported as kPublic);
// a subject without live records gives one kUnknown entry whose id is the subject.
[[nodiscard]] std::vector<ResolvedRecord> resolve_records(const storage::Dataset& dataset, const DeletionRequest& request);

}  // namespace lethe::deletion
