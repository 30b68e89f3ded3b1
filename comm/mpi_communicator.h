// comm/mpi_communicator.h — the default backend: Open MPI collectives on host memory (CUDA buffers
// staged through host memory when MPI is not CUDA-aware), with every rank's arrival checked first.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/collective_call.h"
#include "comm/communicator.h"
#include "comm/mpi_runtime.h"

namespace lethe::comm {

// The MPI datatype of a DataType (also used by the benchmark's raw-MPI reference).
[[nodiscard]] MPI_Datatype mpi_datatype(DataType type);

// Before each collective, every rank sends every peer a small description of the call it made
// (an arrival) and polls for theirs until the timeout: a rank that never arrives is named in a
// CommTimeout, a rank that called something else in a CommError. The data then moves through
// the blocking MPI collective, which Open MPI runs faster than its nonblocking ones (measured
// 1.3-2x on 2 ranks). The check costs size()-1 small messages each way per collective. A CommTimeout
// leaves the communicator unusable; the usual response is to let the process fail, so that
// mpirun ends the job.
class MpiCommunicator final : public Communicator {
 public:
  // The world: a private duplicate of MPI_COMM_WORLD, initializing MPI if needed.
  [[nodiscard]] static std::unique_ptr<MpiCommunicator> world();

  // Takes ownership of `comm` (freed on destruction). Collective over `comm`.
  MpiCommunicator(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, std::chrono::milliseconds timeout);
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string_view backend() const override { return "mpi"; }

  void allreduce(BufferView buffer, ReduceOp op) override;
  void broadcast(BufferView buffer, int root) override;
  void allgather(BufferView send, BufferView recv) override;
  void barrier() override;
  void send(BufferView buffer, int peer, int tag) override;
  void recv(BufferView buffer, int peer, int tag) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  void set_timeout(std::chrono::milliseconds timeout) override;
  std::chrono::milliseconds timeout() const override { return timeout_; }

  // Meets every rank at collective `call` (its sequence is assigned here) without moving data:
  // the arrival check above. The NCCL backend runs it before each of its own collectives.
  void check_arrival(CollectiveCall call);

  // The communicator the data moves on, for callers that mix in raw MPI (benchmarks, NCCL bootstrap).
  [[nodiscard]] MPI_Comm handle() const { return comm_; }
  [[nodiscard]] const std::shared_ptr<MpiRuntime>& runtime() const { return runtime_; }

 private:
  // Polls `requests` until all complete or the deadline; returns the indices still incomplete.
  std::vector<int> wait_for(std::vector<MPI_Request>& requests, std::chrono::steady_clock::time_point deadline);
  void check_mpi(int code, std::string_view what) const;
  void check_usable(std::string_view what) const;
  void check_buffer(const BufferView& buffer, std::string_view what) const;
  void check_rank(int peer, std::string_view what) const;
  [[nodiscard]] bool staged(const BufferView& buffer) const;
  [[nodiscard]] std::string timeout_advice() const;

  std::shared_ptr<MpiRuntime> runtime_;
  MPI_Comm comm_ = MPI_COMM_NULL;      // data
  MPI_Comm arrivals_ = MPI_COMM_NULL;  // arrival messages, apart from the user's tags
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::chrono::milliseconds timeout_;
  std::uint64_t next_sequence_ = 0;
  std::string broken_reason_;  // set by a timeout: requests may still be pending

  // Arrival buffers live here, not on the stack: after a timeout their requests stay pending.
  CollectiveCall outgoing_arrival_;
  std::vector<CollectiveCall> incoming_arrivals_;
  std::vector<MPI_Request> abandoned_requests_;
  std::vector<std::byte> staging_;  // host copy of CUDA buffers
};

}  // namespace lethe::comm
