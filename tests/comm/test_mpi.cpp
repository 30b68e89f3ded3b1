// The conformance suite on the MPI backend (host memory, and CUDA memory staged through the host)
// and on the NCCL backend, run by ctest under mpiexec; a failure on any rank fails the run.
#include <gtest/gtest.h>
#include <mpi.h>

#include <iostream>
#include <memory>

#include "comm/cuda.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "tests/comm/conformance.h"

namespace lethe::comm {
namespace {

using testing::ConformanceCheck;

// Made in main(), before any test: every rank must create communicators in the same order.
MpiCommunicator* g_world = nullptr;

// The NCCL communicator, made on first use by every rank at the same test, or why it cannot be.
Communicator* nccl_world(std::string& why_not) {
  static std::unique_ptr<Communicator> nccl;
  static std::string reason;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (!nccl_built()) {
      reason = "this build has no nccl backend (CMake found no CUDA and NCCL)";
    } else if (cuda_device_count() == 0) {
      reason = "no GPU is visible on this machine";
    } else if (cuda_device_count() < g_world->local_size() && cuda_device_count() != 1) {
      reason = std::to_string(g_world->local_size()) + " ranks share " + std::to_string(cuda_device_count()) +
               " GPUs on this node; NCCL needs one GPU per rank";
    } else if (cuda_device_count() == 1 && g_world->local_size() > 1) {
      reason = std::to_string(g_world->local_size()) + " ranks share one GPU; the nccl backend is tested with one rank";
    } else {
      auto bootstrap = MpiCommunicator::world();
      bootstrap->set_timeout(g_world->timeout());
      nccl = make_nccl_communicator(std::move(bootstrap));
    }
  }
  why_not = reason;
  return nccl.get();
}

class MpiConformance : public ::testing::TestWithParam<ConformanceCheck> {};

TEST_P(MpiConformance, HostMemory) {
  EXPECT_EQ(g_world->backend(), "mpi");
  GetParam().run(*g_world, MemoryKind::kHost);
}

TEST_P(MpiConformance, CudaMemoryStagedThroughHost) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no GPU is visible, so there is no CUDA memory to stage";
  GetParam().run(*g_world, MemoryKind::kCuda);
}

TEST_P(MpiConformance, NcclCudaMemory) {
  std::string why_not;
  Communicator* nccl = nccl_world(why_not);
  if (nccl == nullptr) GTEST_SKIP() << "nccl backend not tested: " << why_not;
  EXPECT_EQ(nccl->backend(), "nccl");
  GetParam().run(*nccl, MemoryKind::kCuda);
}

INSTANTIATE_TEST_SUITE_P(Mpi, MpiConformance, ::testing::ValuesIn(testing::conformance_checks()),
                         testing::check_name);

TEST(MpiWorld, MatchesMpiCommWorldAndItsNode) {
  int rank = -1;
  int size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(g_world->rank(), rank);
  EXPECT_EQ(g_world->size(), size);
  // ctest starts every rank on this machine: one node.
  EXPECT_EQ(g_world->local_size(), size);
  EXPECT_EQ(g_world->local_rank(), rank);
  EXPECT_GE(g_world->runtime()->thread_level(), MPI_THREAD_FUNNELED);
}

TEST(MpiWorld, FactoryMakesAnotherWorld) {
  auto world = make_communicator("mpi");
  EXPECT_EQ(world->backend(), "mpi");
  EXPECT_EQ(world->size(), g_world->size());
  EXPECT_EQ(world->rank(), g_world->rank());
  std::int32_t rank = world->rank();
  world->allreduce(BufferView{&rank, 1, DataType::kInt32, MemoryKind::kHost}, ReduceOp::kMax);
  EXPECT_EQ(rank, world->size() - 1);
}

// Without a GPU a CUDA buffer fails with a CommError on every rank alike (before any data moves),
// so the communicator stays usable.
TEST(MpiWorld, CudaBuffersWithoutAGpuFailCleanly) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible; the staging path runs in the conformance suite";
  float value = 1;
  EXPECT_THROW(g_world->allreduce(BufferView{&value, 1, DataType::kFloat32, MemoryKind::kCuda}, ReduceOp::kSum),
               CommError);
  g_world->allreduce(BufferView{&value, 1, DataType::kFloat32, MemoryKind::kHost}, ReduceOp::kSum);
  EXPECT_EQ(value, static_cast<float>(g_world->size()));
}

// Prints, on ranks other than 0, only failures, prefixed with the rank; rank 0 keeps gtest's
// usual output. After each test every rank learns which ranks failed it.
class RankReporter : public ::testing::EmptyTestEventListener {
 public:
  RankReporter(int rank, int size) : rank_(rank), size_(size) {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  }
  ~RankReporter() override { MPI_Comm_free(&comm_); }

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (rank_ == 0 || !result.failed()) return;
    std::cerr << "[rank " << rank_ << "] " << (result.file_name() ? result.file_name() : "") << ":"
              << result.line_number() << ": Failure\n"
              << result.message() << std::endl;
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    int failed = info.result()->Failed() ? 1 : 0;
    std::vector<int> all(size_);
    MPI_Allgather(&failed, 1, MPI_INT, all.data(), 1, MPI_INT, comm_);
    if (rank_ != 0) return;
    for (int r = 0; r < size_; ++r) {
      if (all[r]) std::cerr << "[  FAILED  ] on rank " << r << ": " << info.test_suite_name() << "." << info.name() << std::endl;
    }
  }

 private:
  int rank_;
  int size_;
  MPI_Comm comm_ = MPI_COMM_NULL;
};

}  // namespace
}  // namespace lethe::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  using lethe::comm::MpiCommunicator;
  auto world = MpiCommunicator::world();
  // A test that desynchronizes the ranks fails within a minute instead of hanging ctest.
  world->set_timeout(std::chrono::seconds(60));
  lethe::comm::g_world = world.get();
  const int rank = world->rank();
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  auto* reporter = new lethe::comm::RankReporter(rank, world->size());
  listeners.Append(reporter);

  int failed = RUN_ALL_TESTS() == 0 ? 0 : 1;
  // Every rank exits non-zero if any rank failed, so mpiexec and ctest see the failure.
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && failed) std::cerr << "lethe_comm_mpi_tests: a test failed on at least one rank" << std::endl;
  // The reporter frees its MPI communicator: before MPI_Finalize, which runs at static destruction.
  delete listeners.Release(reporter);
  return failed;
}
