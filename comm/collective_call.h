// comm/collective_call.h — what one rank asked a collective to do, exchanged before the data
// so that ranks calling different collectives (or different sizes) fail fast and precisely.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"

namespace lethe::comm {

enum class CollectiveKind : std::int32_t { kAllreduce, kBroadcast, kAllgather, kBarrier, kSplit };

[[nodiscard]] std::string_view to_string(CollectiveKind kind);

// Trivially copyable: sent as bytes between ranks. `argument` is the ReduceOp of an allreduce
// and the root of a broadcast; split's color and key may differ between ranks, so they are not here.
struct CollectiveCall {
  std::uint64_t sequence = 0;  // how many collectives this communicator ran before this one
  CollectiveKind kind = CollectiveKind::kBarrier;
  DataType type = DataType::kUInt8;
  std::uint64_t count = 0;
  std::int64_t argument = 0;

  [[nodiscard]] bool operator==(const CollectiveCall&) const = default;
  // "allreduce #4 of 1024 float32 (sum)".
  [[nodiscard]] std::string describe() const;
};

// Throws CommError when `theirs` (from `peer`) is not the collective this rank called.
void check_same_collective(const CollectiveCall& mine, const CollectiveCall& theirs, std::string_view backend,
                           int rank, int peer);

// "rank 3 (mpi)": the prefix of every error message.
[[nodiscard]] std::string rank_label(std::string_view backend, int rank);

// "1, 4 and 7".
[[nodiscard]] std::string join_ranks(const std::vector<int>& ranks);

}  // namespace lethe::comm
