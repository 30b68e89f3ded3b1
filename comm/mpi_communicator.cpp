#include "comm/mpi_communicator.h"

#include <climits>
#include <cstring>
#include <thread>

#include "comm/cuda.h"
#include "comm/reduce.h"

namespace lethe::comm {
namespace {

constexpr std::string_view kBackend = "mpi";
constexpr int kArrivalTag = 1;


MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM; }

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, length);
}

// Host memory a collective reads and writes: the caller's buffer, or a host copy of a CUDA
// buffer that is copied back when `copy_back` and the collective succeeded.
class HostView {
 public:
  HostView(const BufferView& buffer, bool stage, std::vector<std::byte>& staging, std::size_t offset, bool copy_in)
      : buffer_(buffer), stage_(stage) {
    if (!stage_) {
      data_ = buffer.data;
      return;
    }
    if (staging.size() < offset + buffer.bytes()) staging.resize(offset + buffer.bytes());
    data_ = staging.data() + offset;
    if (copy_in) {
      cuda_synchronize();  // the producer of the data may be on any stream
      cuda_copy(data_, buffer.data, buffer.bytes());
    }
  }
  [[nodiscard]] void* data() const { return data_; }
  void copy_back() const {
    if (stage_) cuda_copy(buffer_.data, data_, buffer_.bytes());
  }

 private:
  BufferView buffer_;
  bool stage_;
  void* data_ = nullptr;
};

}  // namespace

MPI_Datatype mpi_datatype(DataType type) {
  switch (type) {
    case DataType::kUInt8: return MPI_UINT8_T;
    case DataType::kInt32: return MPI_INT32_T;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
  }
  throw CommError("unknown DataType " + std::to_string(static_cast<int>(type)));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  auto runtime = MpiRuntime::acquire();
  MPI_Comm comm = MPI_COMM_NULL;
  const int code = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (code != MPI_SUCCESS) throw CommError("MPI_Comm_dup(MPI_COMM_WORLD) failed: " + mpi_error_text(code));
  return std::make_unique<MpiCommunicator>(std::move(runtime), comm, default_timeout());
}

MpiCommunicator::MpiCommunicator(std::shared_ptr<MpiRuntime> runtime, MPI_Comm comm, std::chrono::milliseconds timeout)
    : runtime_(std::move(runtime)), comm_(comm), timeout_(timeout) {
  // Errors come back as codes, turned into CommError naming the rank, instead of aborting the job.
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  check_mpi(MPI_Comm_dup(comm_, &arrivals_), "MPI_Comm_dup for arrivals");
  MPI_Comm_set_errhandler(arrivals_, MPI_ERRORS_RETURN);
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
  incoming_arrivals_.resize(size_);
}

MpiCommunicator::~MpiCommunicator() {
  for (MPI_Request& request : abandoned_requests_) {
    if (request == MPI_REQUEST_NULL) continue;
    MPI_Cancel(&request);
    MPI_Request_free(&request);
  }
  if (arrivals_ != MPI_COMM_NULL) MPI_Comm_free(&arrivals_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check_mpi(int code, std::string_view what) const {
  if (code != MPI_SUCCESS) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " failed: " + mpi_error_text(code));
  }
}

void MpiCommunicator::check_usable(std::string_view what) const {
  if (!broken_reason_.empty()) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) +
                    " on a communicator that is unusable because " + broken_reason_ + "; create a new communicator");
  }
}

void MpiCommunicator::check_buffer(const BufferView& buffer, std::string_view what) const {
  if (buffer.data == nullptr && buffer.count > 0) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " got a null buffer of " +
                    std::to_string(buffer.count) + " elements");
  }
  if (buffer.count > static_cast<std::size_t>(INT_MAX)) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " of " + std::to_string(buffer.count) +
                    " elements exceeds MPI's limit of 2^31-1 per call; split the buffer");
  }
  if (buffer.memory == MemoryKind::kCuda && cuda_device_count() == 0) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " got a CUDA buffer, but " +
                    (cuda_built() ? "no GPU is visible to this process" : "this build has no CUDA support") +
                    "; pass host memory, or run where each rank has a GPU");
  }
}

void MpiCommunicator::check_rank(int peer, std::string_view what) const {
  if (peer < 0 || peer >= size_) {
    throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " " + std::to_string(peer) +
                    " is not a rank of this communicator of size " + std::to_string(size_));
  }
}

bool MpiCommunicator::staged(const BufferView& buffer) const {
  return buffer.memory == MemoryKind::kCuda && !runtime_->cuda_aware();
}

std::string MpiCommunicator::timeout_advice() const {
  return ". Check that every rank makes the same calls in the same order, or raise the timeout (set_timeout, "
         "LETHE_COMM_TIMEOUT_S)";
}

std::vector<int> MpiCommunicator::wait_for(std::vector<MPI_Request>& requests,
                                           std::chrono::steady_clock::time_point deadline) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    int done = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (done) return {};
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    // Spin while a peer is likely just behind; then give the core away (ranks may share cores).
    if (now - start > std::chrono::milliseconds(100)) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    } else if (now - start > std::chrono::microseconds(200)) {
      std::this_thread::yield();
    }
  }
  std::vector<int> incomplete;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    int done = 0;
    if (requests[i] != MPI_REQUEST_NULL) MPI_Test(&requests[i], &done, MPI_STATUS_IGNORE);
    if (requests[i] != MPI_REQUEST_NULL && !done) incomplete.push_back(static_cast<int>(i));
  }
  return incomplete;
}

void MpiCommunicator::check_arrival(CollectiveCall call) {
  call.sequence = next_sequence_++;
  check_usable(call.describe());
  if (size_ == 1) return;
  outgoing_arrival_ = call;
  std::vector<MPI_Request> requests;  // receives first, one per peer in rank order, then sends
  std::vector<int> peers;
  requests.reserve(2 * (size_ - 1));
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    peers.push_back(peer);
    requests.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Irecv(&incoming_arrivals_[peer], sizeof(CollectiveCall), MPI_BYTE, peer, kArrivalTag, arrivals_,
                        &requests.back()),
              "MPI_Irecv of an arrival");
  }
  for (int peer : peers) {
    requests.push_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Isend(&outgoing_arrival_, sizeof(CollectiveCall), MPI_BYTE, peer, kArrivalTag, arrivals_,
                        &requests.back()),
              "MPI_Isend of an arrival");
  }
  const std::vector<int> incomplete = wait_for(requests, std::chrono::steady_clock::now() + timeout_);
  if (!incomplete.empty()) {
    std::vector<int> missing;
    for (int index : incomplete) {
      if (index < static_cast<int>(peers.size())) missing.push_back(peers[index]);
      abandoned_requests_.push_back(requests[index]);
    }
    broken_reason_ = rank_label(kBackend, rank_) + ": " + call.describe() + " timed out after " +
                     std::to_string(timeout_.count()) + " ms; not heard from rank" + (missing.size() > 1 ? "s " : " ") +
                     join_ranks(missing);
    throw CommTimeout(broken_reason_ + timeout_advice());
  }
  for (int peer : peers) check_same_collective(call, incoming_arrivals_[peer], kBackend, rank_, peer);
}

void MpiCommunicator::allreduce(BufferView buffer, ReduceOp op) {
  check_buffer(buffer, "allreduce");
  check_arrival({0, CollectiveKind::kAllreduce, buffer.type, buffer.count, static_cast<std::int64_t>(op)});
  if (buffer.count == 0) return;
  HostView host(buffer, staged(buffer), staging_, 0, true);
  if (size_ > 1) {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, host.data(), static_cast<int>(buffer.count), mpi_datatype(buffer.type),
                            mpi_op(op), comm_),
              "MPI_Allreduce");
  }
  if (op == ReduceOp::kAverage) {
    if (host.data() == buffer.data && buffer.memory == MemoryKind::kCuda) {
      // CUDA-aware MPI reduced in device memory: divide on a host copy.
      std::vector<std::byte> copy(buffer.bytes());
      cuda_copy(copy.data(), buffer.data, copy.size());
      divide_in_place(copy.data(), buffer.count, buffer.type, size_);
      cuda_copy(buffer.data, copy.data(), copy.size());
      return;
    }
    divide_in_place(host.data(), buffer.count, buffer.type, size_);
  }
  host.copy_back();
}

void MpiCommunicator::broadcast(BufferView buffer, int root) {
  check_buffer(buffer, "broadcast");
  check_rank(root, "broadcast root");
  check_arrival({0, CollectiveKind::kBroadcast, buffer.type, buffer.count, root});
  if (buffer.count == 0 || size_ == 1) return;
  HostView host(buffer, staged(buffer), staging_, 0, rank_ == root);
  check_mpi(MPI_Bcast(host.data(), static_cast<int>(buffer.count), mpi_datatype(buffer.type), root, comm_), "MPI_Bcast");
  if (rank_ != root) host.copy_back();
}

void MpiCommunicator::allgather(BufferView send, BufferView recv) {
  check_buffer(send, "allgather send");
  check_buffer(recv, "allgather receive");
  if (recv.type != send.type || recv.count != send.count * static_cast<std::size_t>(size_)) {
    throw CommError(rank_label(kBackend, rank_) + ": allgather needs a receive buffer of " +
                    std::to_string(send.count * size_) + " " + std::string(to_string(send.type)) + " (size() * " +
                    std::to_string(send.count) + "), got " + std::to_string(recv.count) + " " +
                    std::string(to_string(recv.type)));
  }
  check_arrival({0, CollectiveKind::kAllgather, send.type, send.count, 0});
  if (send.count == 0) return;
  const std::size_t bytes = send.bytes();
  const bool in_place = static_cast<std::byte*>(recv.data) + rank_ * bytes == send.data;
  HostView host_recv(recv, staged(recv), staging_, 0, in_place);
  const MPI_Datatype type = mpi_datatype(send.type);
  const int count = static_cast<int>(send.count);
  if (in_place) {
    check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, host_recv.data(), count, type, comm_),
              "MPI_Allgather");
  } else {
    // A staged send goes into this rank's slot of the staged receive buffer, then in place.
    if (staged(send) || staged(recv)) {
      void* slot = static_cast<std::byte*>(host_recv.data()) + rank_ * bytes;
      if (send.memory == MemoryKind::kCuda) {
        cuda_synchronize();
        cuda_copy(slot, send.data, bytes);
      } else {
        std::memcpy(slot, send.data, bytes);
      }
      check_mpi(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, host_recv.data(), count, type, comm_),
                "MPI_Allgather");
    } else {
      check_mpi(MPI_Allgather(send.data, count, type, host_recv.data(), count, type, comm_), "MPI_Allgather");
    }
  }
  host_recv.copy_back();
}

void MpiCommunicator::barrier() {
  // The arrival check is itself a barrier: nobody leaves before hearing from everybody.
  check_arrival({0, CollectiveKind::kBarrier, DataType::kUInt8, 0, 0});
}

void MpiCommunicator::send(BufferView buffer, int peer, int tag) {
  check_buffer(buffer, "send");
  check_rank(peer, "send to rank");
  const std::string what = "send of " + std::to_string(buffer.count) + " " + std::string(to_string(buffer.type)) +
                           " to rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
  check_usable(what);
  HostView host(buffer, staged(buffer), staging_, 0, true);
  std::vector<MPI_Request> request(1, MPI_REQUEST_NULL);
  check_mpi(MPI_Isend(host.data(), static_cast<int>(buffer.count), mpi_datatype(buffer.type), peer, tag, comm_,
                      &request[0]),
            what);
  if (!wait_for(request, std::chrono::steady_clock::now() + timeout_).empty()) {
    // A started send cannot be cancelled reliably: MPI may still read the buffer.
    abandoned_requests_.push_back(request[0]);
    broken_reason_ = rank_label(kBackend, rank_) + ": " + what + " timed out after " +
                     std::to_string(timeout_.count()) + " ms; rank " + std::to_string(peer) + " did not receive it";
    throw CommTimeout(broken_reason_ + timeout_advice());
  }
}

void MpiCommunicator::recv(BufferView buffer, int peer, int tag) {
  check_buffer(buffer, "recv");
  check_rank(peer, "recv from rank");
  const std::string what = "recv of " + std::to_string(buffer.count) + " " + std::string(to_string(buffer.type)) +
                           " from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
  check_usable(what);
  HostView host(buffer, staged(buffer), staging_, 0, false);
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Irecv(host.data(), static_cast<int>(buffer.count), mpi_datatype(buffer.type), peer, tag, comm_, &request),
            what);
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout_;
  MPI_Status status;
  int done = 0;
  while (true) {
    check_mpi(MPI_Test(&request, &done, &status), what);
    if (done) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      // A receive can be cancelled: afterwards MPI no longer touches the buffer.
      MPI_Cancel(&request);
      MPI_Wait(&request, &status);
      int cancelled = 0;
      MPI_Test_cancelled(&status, &cancelled);
      if (cancelled) {
        throw CommTimeout(rank_label(kBackend, rank_) + ": " + what + " timed out after " +
                          std::to_string(timeout_.count()) + " ms; not heard from rank " + std::to_string(peer) +
                          timeout_advice());
      }
      break;  // the message arrived while cancelling
    }
    if (now - start > std::chrono::milliseconds(100)) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  int received = 0;
  MPI_Get_count(&status, mpi_datatype(buffer.type), &received);
  if (static_cast<std::size_t>(received) != buffer.count) {
    throw CommError(rank_label(kBackend, rank_) + ": " + what + " got only " + std::to_string(received) +
                    " elements; the sender and receiver must agree on the size");
  }
  host.copy_back();
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  check_arrival({0, CollectiveKind::kSplit, DataType::kUInt8, 0, 0});
  MPI_Comm part = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &part), "MPI_Comm_split");
  if (part == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(runtime_, part, timeout_);
}

void MpiCommunicator::set_timeout(std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) {
    throw CommError(rank_label(kBackend, rank_) + ": timeout must be positive, got " +
                    std::to_string(timeout.count()) + " ms");
  }
  timeout_ = timeout;
}

}  // namespace lethe::comm
