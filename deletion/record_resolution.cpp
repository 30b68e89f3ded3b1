#include "deletion/record_resolution.h"

namespace lethe::deletion {

std::string_view to_string(RecordOutcome outcome) {
  switch (outcome) {
    case RecordOutcome::kDelete: return "deleted";
    case RecordOutcome::kUnknown: return "unknown";
    case RecordOutcome::kPublic: return "refused_public";
    case RecordOutcome::kAlreadyErased: return "already_erased";
  }
  return "unknown";
}

std::string_view reason(RecordOutcome outcome) {
  switch (outcome) {
    case RecordOutcome::kDelete: return "";
    case RecordOutcome::kUnknown: return "no record with this id (or no live record of this subject) in the job's dataset";
    case RecordOutcome::kPublic:
      return "public record: it pretrained the frozen backbone, which no fast route can forget; delete it with a full "
             "retrain of the backbone (erase it with `lethe erase --allow-public`, then pretrain and train again)";
    case RecordOutcome::kAlreadyErased: return "erased by an earlier request; no model holds it any more";
  }
  return "";
}

namespace {

ResolvedRecord resolve_row(const storage::Dataset& dataset, std::string id, std::uint64_t row) {
  ResolvedRecord record{std::move(id), RecordOutcome::kDelete, row};
  if (dataset.is_tombstoned(row)) {
    record.outcome = RecordOutcome::kAlreadyErased;
  } else if (dataset.is_public(row)) {
    record.outcome = RecordOutcome::kPublic;
  }
  return record;
}

}  // namespace

std::vector<ResolvedRecord> resolve_records(const storage::Dataset& dataset, const DeletionRequest& request) {
  std::vector<ResolvedRecord> out;
  if (request.subject) {
    for (const auto row : dataset.rows_of_subject(*request.subject)) {
      out.push_back(resolve_row(dataset, std::string(dataset.id(row)), row));
    }
    if (out.empty()) out.push_back({*request.subject, RecordOutcome::kUnknown});
    return out;
  }
  out.reserve(request.records.size());
  for (const auto& id : request.records) {
    const auto row = dataset.find(id);
    if (!row) {
      out.push_back({id, RecordOutcome::kUnknown});
    } else {
      out.push_back(resolve_row(dataset, id, *row));
    }
  }
  return out;
}

}  // namespace lethe::deletion
