#include "tests/comm/conformance.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>

#include "comm/tensor.h"

namespace lethe::comm::testing {
namespace {

template <typename T>
constexpr DataType type_of() {
  if constexpr (std::is_same_v<T, std::uint8_t>) return DataType::kUInt8;
  if constexpr (std::is_same_v<T, std::int32_t>) return DataType::kInt32;
  if constexpr (std::is_same_v<T, std::int64_t>) return DataType::kInt64;
  if constexpr (std::is_same_v<T, float>) return DataType::kFloat32;
  if constexpr (std::is_same_v<T, double>) return DataType::kFloat64;
}

// Counts the elements of `actual` that differ from expected(i); reports the first few.
template <typename T, typename Expected>
void expect_values(const std::vector<T>& actual, Expected expected, const std::string& what, int rank) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const T want = static_cast<T>(expected(i));
    if (actual[i] != want) {
      if (++wrong <= 3) {
        ADD_FAILURE() << what << " on rank " << rank << ": element " << i << " is " << +actual[i] << ", expected "
                      << +want;
      }
    }
  }
  EXPECT_EQ(wrong, 0u) << what << " on rank " << rank << ": " << wrong << " of " << actual.size()
                       << " elements wrong";
}

// Rank r contributes (i % 7) + 2r: the sum, the average (exact: divisible by n) and the max are
// known in closed form and exact in every dtype, uint8 included.
template <typename T>
void check_ops_for_type(Communicator& comm, MemoryKind memory, std::size_t count) {
  const int n = comm.size();
  const int r = comm.rank();
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAverage, ReduceOp::kMax}) {
    TestBuffer<T> buffer(count, memory);
    for (std::size_t i = 0; i < count; ++i) buffer[i] = static_cast<T>(i % 7 + 2 * r);
    comm.allreduce(buffer.view(type_of<T>()), op);
    buffer.fetch();
    const std::string what = "allreduce " + std::string(to_string(op)) + " of " + std::to_string(count) + " " +
                             std::string(to_string(type_of<T>()));
    expect_values(
        buffer.host(),
        [&](std::size_t i) -> std::int64_t {
          const auto base = static_cast<std::int64_t>(i % 7);
          switch (op) {
            case ReduceOp::kSum: return n * base + n * (n - 1);
            case ReduceOp::kAverage: return base + (n - 1);
            case ReduceOp::kMax: return base + 2 * (n - 1);
          }
          return -1;
        },
        what, r);
  }
}

void allreduce_every_dtype_and_op(Communicator& comm, MemoryKind memory) {
  for (std::size_t count : {std::size_t{1}, std::size_t{33}}) {
    check_ops_for_type<std::uint8_t>(comm, memory, count);
    check_ops_for_type<std::int32_t>(comm, memory, count);
    check_ops_for_type<std::int64_t>(comm, memory, count);
    check_ops_for_type<float>(comm, memory, count);
    check_ops_for_type<double>(comm, memory, count);
  }
}

// From one element to tens of MiB (the largest: 6 Mi float32 = 24 MiB).
void allreduce_sizes_up_to_tens_of_mib(Communicator& comm, MemoryKind memory) {
  const int n = comm.size();
  const int r = comm.rank();
  for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{4097}, std::size_t{1} << 18,
                            std::size_t{6} << 20}) {
    TestBuffer<float> buffer(count, memory);
    for (std::size_t i = 0; i < count; ++i) buffer[i] = static_cast<float>(i % 100 + r);
    comm.allreduce(buffer.view(DataType::kFloat32), ReduceOp::kSum);
    buffer.fetch();
    expect_values(
        buffer.host(), [&](std::size_t i) { return static_cast<float>(n * (i % 100) + n * (n - 1) / 2); },
        "allreduce sum of " + std::to_string(count) + " float32", r);
  }
}

void allreduce_of_nothing_is_a_no_op(Communicator& comm, MemoryKind) {
  comm.allreduce(BufferView{nullptr, 0, DataType::kFloat64, MemoryKind::kHost}, ReduceOp::kSum);
  comm.broadcast(BufferView{nullptr, 0, DataType::kInt32, MemoryKind::kHost}, 0);
  // The communicator still lines up afterwards.
  std::int64_t one = 1;
  comm.allreduce(BufferView{&one, 1, DataType::kInt64, MemoryKind::kHost}, ReduceOp::kSum);
  EXPECT_EQ(one, comm.size());
}

void broadcast_from_every_root(Communicator& comm, MemoryKind memory) {
  for (int root = comm.size() - 1; root >= 0; --root) {
    for (std::size_t count : {std::size_t{1}, std::size_t{100003}}) {
      TestBuffer<std::int64_t> buffer(count, memory);
      for (std::size_t i = 0; i < count; ++i) {
        buffer[i] = comm.rank() == root ? static_cast<std::int64_t>(i * 31 + root) : -1;
      }
      comm.broadcast(buffer.view(DataType::kInt64), root);
      buffer.fetch();
      expect_values(
          buffer.host(), [&](std::size_t i) { return static_cast<std::int64_t>(i * 31 + root); },
          "broadcast of " + std::to_string(count) + " int64 from root " + std::to_string(root), comm.rank());
    }
  }
}

void allgather_places_each_rank_at_its_offset(Communicator& comm, MemoryKind memory) {
  const int n = comm.size();
  for (std::size_t count : {std::size_t{1}, std::size_t{5}, std::size_t{1} << 16}) {
    TestBuffer<double> send(count, memory);
    for (std::size_t i = 0; i < count; ++i) send[i] = comm.rank() * 1000.0 + static_cast<double>(i);
    TestBuffer<double> recv(count * n, memory);
    comm.allgather(send.view(DataType::kFloat64), recv.view(DataType::kFloat64));
    recv.fetch();
    expect_values(
        recv.host(), [&](std::size_t i) { return static_cast<double>(i / count) * 1000.0 + static_cast<double>(i % count); },
        "allgather of " + std::to_string(count) + " float64", comm.rank());
  }
  // In place: the send buffer is this rank's slot of the receive buffer.
  if (memory == MemoryKind::kHost) {
    const std::size_t count = 3;
    std::vector<std::int32_t> all(count * n, -1);
    for (std::size_t i = 0; i < count; ++i) all[comm.rank() * count + i] = comm.rank() * 10 + static_cast<int>(i);
    comm.allgather(BufferView{all.data() + comm.rank() * count, count, DataType::kInt32, MemoryKind::kHost},
                   BufferView{all.data(), all.size(), DataType::kInt32, MemoryKind::kHost});
    expect_values(
        all, [&](std::size_t i) { return static_cast<std::int32_t>((i / count) * 10 + i % count); },
        "in-place allgather", comm.rank());
  }
  // A receive buffer of the wrong size is refused before anything moves.
  std::vector<double> one(1);
  std::vector<double> too_small(1);
  if (n > 1) {
    EXPECT_THROW(comm.allgather(BufferView{one.data(), 1, DataType::kFloat64, MemoryKind::kHost},
                                BufferView{too_small.data(), 1, DataType::kFloat64, MemoryKind::kHost}),
                 CommError);
  }
}

// Rank r arrives r * 60 ms late: nobody may leave the barrier before the last rank arrived
// (the slack covers ranks leaving the first barrier a little apart on a loaded machine).
void barrier_waits_for_the_last_rank(Communicator& comm, MemoryKind) {
  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(60 * comm.rank()));
  comm.barrier();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(60 * (comm.size() - 1)) - std::chrono::milliseconds(30))
      << "rank " << comm.rank() << " left the barrier before rank " << comm.size() - 1 << " arrived";
}

void send_recv_around_a_ring(Communicator& comm, MemoryKind memory) {
  const int n = comm.size();
  if (n < 2) GTEST_SKIP() << "send/recv between ranks needs at least 2 ranks, this world has 1";
  const int r = comm.rank();
  const int next = (r + 1) % n;
  const int previous = (r + n - 1) % n;
  for (std::size_t count : {std::size_t{1}, std::size_t{3} << 18}) {
    TestBuffer<float> out(count, memory);
    TestBuffer<float> in(count, memory);
    for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<float>(r * 7 + i % 1000);
    // Even ranks send first, so that blocking sends of large messages cannot all wait at once.
    if (r % 2 == 0) {
      comm.send(out.view(DataType::kFloat32), next, 7);
      comm.recv(in.view(DataType::kFloat32), previous, 7);
    } else {
      comm.recv(in.view(DataType::kFloat32), previous, 7);
      comm.send(out.view(DataType::kFloat32), next, 7);
    }
    in.fetch();
    expect_values(
        in.host(), [&](std::size_t i) { return static_cast<float>(previous * 7 + i % 1000); },
        "recv of " + std::to_string(count) + " float32 from rank " + std::to_string(previous), r);
  }
  // Tags select the message: rank 1 takes tag 2 before tag 1. (NCCL payloads match in order,
  // so this part runs on host memory.)
  if (r == 0) {
    std::int32_t first = 11;
    std::int32_t second = 22;
    comm.send(BufferView{&first, 1, DataType::kInt32, MemoryKind::kHost}, 1, 1);
    comm.send(BufferView{&second, 1, DataType::kInt32, MemoryKind::kHost}, 1, 2);
  } else if (r == 1) {
    std::int32_t by_tag_2 = 0;
    std::int32_t by_tag_1 = 0;
    comm.recv(BufferView{&by_tag_2, 1, DataType::kInt32, MemoryKind::kHost}, 0, 2);
    comm.recv(BufferView{&by_tag_1, 1, DataType::kInt32, MemoryKind::kHost}, 0, 1);
    EXPECT_EQ(by_tag_2, 22);
    EXPECT_EQ(by_tag_1, 11);
  }
  comm.barrier();
}

void split_orders_by_key_and_reduces_within_color(Communicator& comm, MemoryKind memory) {
  const int n = comm.size();
  const int r = comm.rank();
  const int color = r % 2;
  auto part = comm.split(color, -r);  // keys reverse the order within a color
  ASSERT_NE(part, nullptr);
  std::vector<int> members;
  for (int q = 0; q < n; ++q) {
    if (q % 2 == color) members.push_back(q);
  }
  ASSERT_EQ(part->size(), static_cast<int>(members.size())) << "rank " << r;
  const int expected_rank = static_cast<int>(members.size()) - 1 -
                            static_cast<int>(std::find(members.begin(), members.end(), r) - members.begin());
  EXPECT_EQ(part->rank(), expected_rank) << "rank " << r << " of color " << color;
  EXPECT_EQ(part->timeout(), comm.timeout());
  TestBuffer<std::int64_t> value(1, memory);
  value[0] = r;
  part->allreduce(value.view(DataType::kInt64), ReduceOp::kSum);
  value.fetch();
  std::int64_t want = 0;
  for (int q : members) want += q;
  EXPECT_EQ(value[0], want) << "sum of the world ranks of color " << color << " seen by rank " << r;

  // A negative color leaves a rank out.
  auto without_zero = comm.split(r == 0 ? -1 : 0, r);
  if (r == 0) {
    EXPECT_EQ(without_zero, nullptr);
  } else {
    ASSERT_NE(without_zero, nullptr);
    EXPECT_EQ(without_zero->size(), n - 1);
    EXPECT_EQ(without_zero->rank(), r - 1);
    without_zero->barrier();
  }
  comm.barrier();
}

// The last rank skips an allreduce: the others must get a CommTimeout naming the collective and
// that rank, within the (short) timeout, and the world must still work afterwards.
void timeout_names_the_collective_and_missing_rank(Communicator& comm, MemoryKind memory) {
  const int n = comm.size();
  if (n < 2) GTEST_SKIP() << "a missing peer needs at least 2 ranks, this world has 1";
  auto part = comm.split(0, comm.rank());
  ASSERT_NE(part, nullptr);
  part->set_timeout(std::chrono::milliseconds(300));
  EXPECT_EQ(part->timeout(), std::chrono::milliseconds(300));
  if (comm.rank() != n - 1) {
    TestBuffer<float> buffer(4, memory);
    const auto start = std::chrono::steady_clock::now();
    try {
      part->allreduce(buffer.view(DataType::kFloat32), ReduceOp::kSum);
      ADD_FAILURE() << "rank " << comm.rank() << ": allreduce returned although rank " << n - 1 << " never called it";
    } catch (const CommTimeout& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("allreduce"), std::string::npos) << message;
      EXPECT_NE(message.find("rank " + std::to_string(comm.rank())), std::string::npos) << message;
      EXPECT_NE(message.find("not heard from rank " + std::to_string(n - 1)), std::string::npos) << message;
    }
    const auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_GE(waited, std::chrono::milliseconds(290));
    EXPECT_LT(waited, std::chrono::seconds(10));
    // The timed-out communicator refuses further work instead of hanging.
    EXPECT_THROW(part->barrier(), CommError);
  }
  comm.barrier();
}

// Rank 0 broadcasts while the others allreduce: every rank learns of the mismatch, by name.
void mismatched_collectives_fail_on_every_rank(Communicator& comm, MemoryKind memory) {
  if (comm.size() < 2) GTEST_SKIP() << "a mismatch needs at least 2 ranks, this world has 1";
  TestBuffer<std::int32_t> buffer(8, memory);
  try {
    if (comm.rank() == 0) {
      comm.broadcast(buffer.view(DataType::kInt32), 0);
    } else {
      comm.allreduce(buffer.view(DataType::kInt32), ReduceOp::kSum);
    }
    ADD_FAILURE() << "rank " << comm.rank() << ": a broadcast met an allreduce without an error";
  } catch (const CommTimeout& e) {
    ADD_FAILURE() << "rank " << comm.rank() << ": a mismatch was reported as a timeout: " << e.what();
  } catch (const CommError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("broadcast"), std::string::npos) << message;
    EXPECT_NE(message.find("allreduce"), std::string::npos) << message;
  }
  // Nothing moved, so the communicator is still in step.
  std::int32_t one = 1;
  comm.allreduce(BufferView{&one, 1, DataType::kInt32, MemoryKind::kHost}, ReduceOp::kSum);
  EXPECT_EQ(one, comm.size());
}

void tensors_map_dtype_and_device(Communicator& comm, MemoryKind) {
  const int n = comm.size();
  const int r = comm.rank();
  auto matrix = at::full({3, 4}, static_cast<double>(r + 1), at::TensorOptions().dtype(at::kFloat));
  allreduce(comm, matrix, ReduceOp::kSum);
  EXPECT_TRUE(matrix.equal(at::full({3, 4}, n * (n + 1) / 2.0, at::TensorOptions().dtype(at::kFloat))))
      << "rank " << r;

  auto ids = r == n - 1 ? at::arange(10, at::TensorOptions().dtype(at::kLong)) : at::zeros({10}, at::kLong);
  broadcast(comm, ids, n - 1);
  EXPECT_TRUE(ids.equal(at::arange(10, at::TensorOptions().dtype(at::kLong)))) << "rank " << r;

  auto mine = at::full({2}, r, at::TensorOptions().dtype(at::kInt));
  auto gathered = at::zeros({n, 2}, at::TensorOptions().dtype(at::kInt));
  allgather(comm, mine, gathered);
  for (int q = 0; q < n; ++q) {
    EXPECT_EQ(gathered[q][0].item<int>(), q);
    EXPECT_EQ(gathered[q][1].item<int>(), q);
  }

  // Refused before anything moves, identically on every rank, so the ranks stay in step.
  auto transposed = at::zeros({4, 3}, at::kFloat).t();
  try {
    allreduce(comm, transposed, ReduceOp::kSum);
    ADD_FAILURE() << "a non-contiguous tensor was accepted";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("contiguous"), std::string::npos) << e.what();
  }
  EXPECT_THROW(allreduce(comm, at::zeros({4}, at::kHalf), ReduceOp::kSum), CommError);
  EXPECT_THROW(allreduce(comm, at::zeros({4}, at::kBool), ReduceOp::kSum), CommError);
  comm.barrier();
}

}  // namespace

const std::vector<ConformanceCheck>& conformance_checks() {
  static const std::vector<ConformanceCheck> checks = {
      {"AllreduceEveryDtypeAndOp", allreduce_every_dtype_and_op},
      {"AllreduceSizesUpToTensOfMiB", allreduce_sizes_up_to_tens_of_mib},
      {"AllreduceOfNothingIsANoOp", allreduce_of_nothing_is_a_no_op},
      {"BroadcastFromEveryRoot", broadcast_from_every_root},
      {"AllgatherPlacesEachRankAtItsOffset", allgather_places_each_rank_at_its_offset},
      {"BarrierWaitsForTheLastRank", barrier_waits_for_the_last_rank},
      {"SendRecvAroundARing", send_recv_around_a_ring},
      {"SplitOrdersByKeyAndReducesWithinColor", split_orders_by_key_and_reduces_within_color},
      {"TimeoutNamesTheCollectiveAndMissingRank", timeout_names_the_collective_and_missing_rank},
      {"MismatchedCollectivesFailOnEveryRank", mismatched_collectives_fail_on_every_rank},
      {"TensorsMapDtypeAndDevice", tensors_map_dtype_and_device},
  };
  return checks;
}

}  // namespace lethe::comm::testing
