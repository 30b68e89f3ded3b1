// The conformance suite on the in-process backend (2 and 3 thread-ranks), and what only the
// in-process backend, the factory and the torch adapter's type mapping do.
#include <gtest/gtest.h>

#include <ATen/ops/zeros.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include "comm/in_process.h"
#include "comm/nccl_communicator.h"
#include "comm/tensor.h"
#include "tests/comm/conformance.h"

namespace lethe::comm {
namespace {

using testing::ConformanceCheck;

class InProcessConformance : public ::testing::TestWithParam<std::tuple<ConformanceCheck, int>> {};

TEST_P(InProcessConformance, Passes) {
  const auto& [check, world_size] = GetParam();
  run_in_process(world_size, [&](Communicator& comm) {
    EXPECT_EQ(comm.backend(), "in-process");
    check.run(comm, MemoryKind::kHost);
  });
}

INSTANTIATE_TEST_SUITE_P(
    InProcess, InProcessConformance,
    ::testing::Combine(::testing::ValuesIn(testing::conformance_checks()), ::testing::Values(2, 3)),
    [](const auto& info) {
      return std::get<0>(info.param).name + "_" + std::to_string(std::get<1>(info.param)) + "Ranks";
    });

TEST(InProcess, RanksAndLocalRanksCoverTheWorld) {
  std::mutex mutex;
  std::vector<int> seen;
  run_in_process(4, [&](Communicator& comm) {
    EXPECT_EQ(comm.size(), 4);
    EXPECT_EQ(comm.local_size(), 4);
    EXPECT_EQ(comm.local_rank(), comm.rank());
    std::lock_guard lock(mutex);
    seen.push_back(comm.rank());
  });
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3}));
}

TEST(InProcess, FailingRankIsRethrownAndPeersAreReleased) {
  std::string peer_error;
  std::mutex mutex;
  const auto start = std::chrono::steady_clock::now();
  try {
    run_in_process(3, [&](Communicator& comm) {
      if (comm.rank() == 1) throw std::runtime_error("rank 1 broke on purpose");
      try {
        comm.barrier();  // rank 1 never comes: the abort, not the 300 s timeout, must end this
      } catch (const CommError& e) {
        std::lock_guard lock(mutex);
        peer_error = e.what();
        throw;
      }
    });
    FAIL() << "run_in_process returned although rank 1 threw";
  } catch (const CommError& e) {
    FAIL() << "the peers' CommError was rethrown instead of rank 1's exception: " << e.what();
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "rank 1 broke on purpose");
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_NE(peer_error.find("rank 1 failed: rank 1 broke on purpose"), std::string::npos) << peer_error;
}

TEST(InProcess, TimeoutNamesEveryMissingRank) {
  run_in_process(4, [](Communicator& comm) {
    comm.set_timeout(std::chrono::milliseconds(100));
    if (comm.rank() >= 2) return;
    try {
      comm.barrier();
      ADD_FAILURE() << "barrier returned without ranks 2 and 3";
    } catch (const CommTimeout& e) {
      EXPECT_NE(std::string(e.what()).find("barrier #0 timed out after 100 ms; not heard from ranks 2 and 3"),
                std::string::npos)
          << e.what();
    }
  });
}

TEST(InProcess, RecvTimeoutNamesThePeerAndTag) {
  run_in_process(2, [](Communicator& comm) {
    comm.set_timeout(std::chrono::milliseconds(50));
    if (comm.rank() != 0) return;
    std::int32_t value = 0;
    try {
      comm.recv(BufferView{&value, 1, DataType::kInt32, MemoryKind::kHost}, 1, 9);
      ADD_FAILURE() << "recv returned without a sender";
    } catch (const CommTimeout& e) {
      EXPECT_NE(std::string(e.what()).find("recv from rank 1 (tag 9) timed out"), std::string::npos) << e.what();
    }
  });
}

TEST(InProcess, RecvOfTheWrongSizeIsRefused) {
  run_in_process(2, [](Communicator& comm) {
    std::vector<std::int32_t> values(4, 5);
    if (comm.rank() == 0) {
      comm.send(BufferView{values.data(), 3, DataType::kInt32, MemoryKind::kHost}, 1, 0);
    } else {
      EXPECT_THROW(comm.recv(BufferView{values.data(), 4, DataType::kInt32, MemoryKind::kHost}, 0, 0), CommError);
    }
  });
}

TEST(InProcess, RefusesCudaBuffersBadRanksAndBadTimeouts) {
  run_in_process(2, [](Communicator& comm) {
    float value = 0;
    EXPECT_THROW(comm.allreduce(BufferView{&value, 1, DataType::kFloat32, MemoryKind::kCuda}, ReduceOp::kSum),
                 CommError);
    EXPECT_THROW(comm.broadcast(BufferView{&value, 1, DataType::kFloat32, MemoryKind::kHost}, 2), CommError);
    EXPECT_THROW(comm.send(BufferView{&value, 1, DataType::kFloat32, MemoryKind::kHost}, -1, 0), CommError);
    EXPECT_THROW(comm.set_timeout(std::chrono::milliseconds(0)), CommError);
  });
  EXPECT_THROW(make_in_process_world(0), CommError);
}

TEST(Factory, RefusesUnknownBackendsByName) {
  try {
    (void)make_communicator("gloo");
    FAIL() << "an unknown backend was accepted";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown communicator backend 'gloo'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(backend_available("mpi"));
  EXPECT_EQ(backend_available("nccl"), nccl_built());
  EXPECT_FALSE(backend_available("gloo"));
}

class DefaultTimeout : public ::testing::Test {
 protected:
  void TearDown() override { unsetenv("LETHE_COMM_TIMEOUT_S"); }
};

TEST_F(DefaultTimeout, ComesFromTheEnvironmentOr300Seconds) {
  unsetenv("LETHE_COMM_TIMEOUT_S");
  EXPECT_EQ(default_timeout(), std::chrono::seconds(300));
  setenv("LETHE_COMM_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(default_timeout(), std::chrono::milliseconds(2500));
  auto ranks = make_in_process_world(1);
  EXPECT_EQ(ranks[0]->timeout(), std::chrono::milliseconds(2500));
  for (const char* bad : {"abc", "-1", "0", "5s"}) {
    setenv("LETHE_COMM_TIMEOUT_S", bad, 1);
    EXPECT_THROW((void)default_timeout(), CommError) << bad;
  }
}

TEST(TensorAdapter, MapsDtypesAndRefusesOthers) {
  EXPECT_EQ(data_type(at::kByte), DataType::kUInt8);
  EXPECT_EQ(data_type(at::kInt), DataType::kInt32);
  EXPECT_EQ(data_type(at::kLong), DataType::kInt64);
  EXPECT_EQ(data_type(at::kFloat), DataType::kFloat32);
  EXPECT_EQ(data_type(at::kDouble), DataType::kFloat64);
  EXPECT_THROW((void)data_type(at::kHalf), CommError);
  auto tensor = at::zeros({2, 3}, at::kDouble);
  const BufferView view = buffer_view(tensor);
  EXPECT_EQ(view.data, tensor.data_ptr());
  EXPECT_EQ(view.count, 6u);
  EXPECT_EQ(view.type, DataType::kFloat64);
  EXPECT_EQ(view.memory, MemoryKind::kHost);
  EXPECT_EQ(view.bytes(), 48u);
  // A contiguous slice is fine; a strided one is not.
  EXPECT_EQ(buffer_view(tensor[1]).count, 3u);
  EXPECT_THROW((void)buffer_view(tensor.select(1, 0)), CommError);
  EXPECT_THROW((void)buffer_view(at::Tensor()), CommError);
}

}  // namespace
}  // namespace lethe::comm
