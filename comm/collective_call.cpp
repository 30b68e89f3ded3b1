#include "comm/collective_call.h"

namespace lethe::comm {

std::string_view to_string(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllreduce: return "allreduce";
    case CollectiveKind::kBroadcast: return "broadcast";
    case CollectiveKind::kAllgather: return "allgather";
    case CollectiveKind::kBarrier: return "barrier";
    case CollectiveKind::kSplit: return "split";
  }
  return "unknown collective";
}

std::string CollectiveCall::describe() const {
  std::string text = std::string(to_string(kind)) + " #" + std::to_string(sequence);
  switch (kind) {
    case CollectiveKind::kAllreduce:
      return text + " of " + std::to_string(count) + " " + std::string(to_string(type)) + " (" +
             std::string(to_string(static_cast<ReduceOp>(argument))) + ")";
    case CollectiveKind::kBroadcast:
      return text + " of " + std::to_string(count) + " " + std::string(to_string(type)) + " from root " +
             std::to_string(argument);
    case CollectiveKind::kAllgather:
      return text + " of " + std::to_string(count) + " " + std::string(to_string(type)) + " per rank";
    case CollectiveKind::kBarrier:
    case CollectiveKind::kSplit: return text;
  }
  return text;
}

void check_same_collective(const CollectiveCall& mine, const CollectiveCall& theirs, std::string_view backend,
                           int rank, int peer) {
  if (mine == theirs) return;
  throw CommError(rank_label(backend, rank) + " called " + mine.describe() + " but rank " + std::to_string(peer) +
                  " called " + theirs.describe() +
                  "; every rank of a communicator must call the same collectives, with the same sizes, in the "
                  "same order");
}

std::string rank_label(std::string_view backend, int rank) {
  return "rank " + std::to_string(rank) + " (" + std::string(backend) + ")";
}

std::string join_ranks(const std::vector<int>& ranks) {
  std::string text;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) text += (i + 1 == ranks.size()) ? " and " : ", ";
    text += std::to_string(ranks[i]);
  }
  return text;
}

}  // namespace lethe::comm
