// comm/communicator.h — the one interface for collectives and point-to-point messages that
// the rest of Lethe uses; backends: MPI (default), NCCL (GPU), in-process (ranks as threads).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace lethe::comm {

enum class DataType { kUInt8, kInt32, kInt64, kFloat32, kFloat64 };
enum class ReduceOp { kSum, kAverage, kMax };
enum class MemoryKind { kHost, kCuda };

[[nodiscard]] std::size_t element_size(DataType type);
[[nodiscard]] std::string_view to_string(DataType type);
[[nodiscard]] std::string_view to_string(ReduceOp op);

// A contiguous typed buffer, in host or CUDA memory, that a collective reads or writes.
struct BufferView {
  void* data = nullptr;
  std::size_t count = 0;  // elements, not bytes
  DataType type = DataType::kUInt8;
  MemoryKind memory = MemoryKind::kHost;

  [[nodiscard]] std::size_t bytes() const { return count * element_size(type); }
};

// Any failure of a collective: a mismatch, a dead peer, a backend error. Names the rank.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A collective that waited longer than the communicator's timeout; names the collective,
// the rank and the peers not heard from.
class CommTimeout : public CommError {
 public:
  using CommError::CommError;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  // Rank and number of ranks on this node (MPI_Comm_split_type shared memory).
  [[nodiscard]] virtual int local_rank() const = 0;
  [[nodiscard]] virtual int local_size() const = 0;
  [[nodiscard]] virtual std::string_view backend() const = 0;

  // In place on every rank; kAverage divides the sum by size().
  virtual void allreduce(BufferView buffer, ReduceOp op) = 0;
  // `buffer` on `root` is copied into `buffer` on every other rank.
  virtual void broadcast(BufferView buffer, int root) = 0;
  // `recv` holds size() * send.count elements: rank r's `send` lands at offset r * send.count.
  virtual void allgather(BufferView send, BufferView recv) = 0;
  virtual void barrier() = 0;
  virtual void send(BufferView buffer, int peer, int tag) = 0;
  virtual void recv(BufferView buffer, int peer, int tag) = 0;

  // Ranks with the same color form a new communicator, ordered by (key, rank).
  // A negative color joins no communicator: that rank gets nullptr.
  [[nodiscard]] virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // How long a collective may wait for its peers before it throws CommTimeout.
  virtual void set_timeout(std::chrono::milliseconds timeout) = 0;
  [[nodiscard]] virtual std::chrono::milliseconds timeout() const = 0;
};

// The timeout a new communicator starts with: LETHE_COMM_TIMEOUT_S (seconds, > 0) if set,
// else 300 s. Throws CommError naming the variable if it is set but not a positive number.
[[nodiscard]] std::chrono::milliseconds default_timeout();

// The world communicator of `backend`: "mpi" (host buffers; CUDA buffers staged through host
// memory) or "nccl" (CUDA buffers through NCCL, host buffers through MPI). Without mpirun the
// world is this one process. Throws CommError for an unknown backend or one not built in.
[[nodiscard]] std::unique_ptr<Communicator> make_communicator(std::string_view backend);

// Whether make_communicator(backend) can succeed in this build ("nccl" needs CUDA and NCCL).
[[nodiscard]] bool backend_available(std::string_view backend);

}  // namespace lethe::comm
