#include "comm/nccl_communicator.h"

#ifdef LETHE_COMM_WITH_NCCL

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <thread>

#include "comm/collective_call.h"

namespace lethe::comm {
namespace {

constexpr std::string_view kBackend = "nccl";

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::kUInt8: return ncclUint8;
    case DataType::kInt32: return ncclInt32;
    case DataType::kInt64: return ncclInt64;
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kFloat64: return ncclFloat64;
  }
  throw CommError("unknown DataType " + std::to_string(static_cast<int>(type)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAverage: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
  }
  throw CommError("unknown ReduceOp " + std::to_string(static_cast<int>(op)));
}

// Which GPU a rank drives, and where: compared across ranks to refuse two ranks on one GPU.
struct DeviceIdentity {
  std::array<char, 256> host{};
  std::array<char, 32> pci_bus{};
  std::int32_t devices = 0;  // GPUs the rank sees
  std::int32_t device = 0;   // the one it would drive
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::unique_ptr<MpiCommunicator> bootstrap) : mpi_(std::move(bootstrap)) {
    select_device();
    ncclUniqueId id{};
    if (mpi_->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    mpi_->broadcast(BufferView{&id, sizeof(id), DataType::kUInt8, MemoryKind::kHost}, 0);
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
    check_nccl(ncclCommInitRank(&comm_, mpi_->size(), id, mpi_->rank()), "ncclCommInitRank");
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (broken_) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    if (done_ != nullptr) cudaEventDestroy(done_);
    if (ready_ != nullptr) cudaEventDestroy(ready_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  int local_rank() const override { return mpi_->local_rank(); }
  int local_size() const override { return mpi_->local_size(); }
  std::string_view backend() const override { return kBackend; }

  void allreduce(BufferView buffer, ReduceOp op) override {
    if (buffer.memory == MemoryKind::kHost) return mpi_->allreduce(buffer, op);
    const CollectiveCall call{0, CollectiveKind::kAllreduce, buffer.type, buffer.count, static_cast<std::int64_t>(op)};
    run(call, [&] {
      return ncclAllReduce(buffer.data, buffer.data, buffer.count, nccl_type(buffer.type), nccl_op(op), comm_,
                           stream_);
    });
  }

  void broadcast(BufferView buffer, int root) override {
    if (buffer.memory == MemoryKind::kHost) return mpi_->broadcast(buffer, root);
    check_rank(root, "broadcast root");
    const CollectiveCall call{0, CollectiveKind::kBroadcast, buffer.type, buffer.count, root};
    run(call, [&] {
      return ncclBroadcast(buffer.data, buffer.data, buffer.count, nccl_type(buffer.type), root, comm_, stream_);
    });
  }

  void allgather(BufferView send, BufferView recv) override {
    if (send.memory == MemoryKind::kHost && recv.memory == MemoryKind::kHost) return mpi_->allgather(send, recv);
    if (send.memory != recv.memory) {
      throw CommError(label() + ": allgather needs send and receive buffers both in CUDA memory (or both on the host)");
    }
    if (recv.type != send.type || recv.count != send.count * static_cast<std::size_t>(size())) {
      throw CommError(label() + ": allgather needs a receive buffer of " + std::to_string(send.count * size()) + " " +
                      std::string(to_string(send.type)) + ", got " + std::to_string(recv.count) + " " +
                      std::string(to_string(recv.type)));
    }
    const CollectiveCall call{0, CollectiveKind::kAllgather, send.type, send.count, 0};
    run(call, [&] {
      return ncclAllGather(send.data, recv.data, send.count, nccl_type(send.type), comm_, stream_);
    });
  }

  void barrier() override { mpi_->barrier(); }

  // The header travels over MPI with the caller's tag, so the tag and size are checked and a
  // silent peer is named; NCCL then moves the payload.
  void send(BufferView buffer, int peer, int tag) override {
    if (buffer.memory == MemoryKind::kHost) return mpi_->send(buffer, peer, tag);
    check_rank(peer, "send to rank");
    std::array<std::int64_t, 2> header{static_cast<std::int64_t>(buffer.count), static_cast<std::int64_t>(buffer.type)};
    mpi_->send(BufferView{header.data(), header.size(), DataType::kInt64, MemoryKind::kHost}, peer, tag);
    launch_and_wait("send to rank " + std::to_string(peer), {peer}, [&] {
      return ncclSend(buffer.data, buffer.count, nccl_type(buffer.type), peer, comm_, stream_);
    });
  }

  void recv(BufferView buffer, int peer, int tag) override {
    if (buffer.memory == MemoryKind::kHost) return mpi_->recv(buffer, peer, tag);
    check_rank(peer, "recv from rank");
    std::array<std::int64_t, 2> header{};
    mpi_->recv(BufferView{header.data(), header.size(), DataType::kInt64, MemoryKind::kHost}, peer, tag);
    if (header[0] != static_cast<std::int64_t>(buffer.count) ||
        header[1] != static_cast<std::int64_t>(buffer.type)) {
      throw CommError(label() + ": recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) +
                      ") expected " + std::to_string(buffer.count) + " " + std::string(to_string(buffer.type)) +
                      " but rank " + std::to_string(peer) + " sends " + std::to_string(header[0]) + " " +
                      std::string(to_string(static_cast<DataType>(header[1]))));
    }
    launch_and_wait("recv from rank " + std::to_string(peer), {peer}, [&] {
      return ncclRecv(buffer.data, buffer.count, nccl_type(buffer.type), peer, comm_, stream_);
    });
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    auto part = mpi_->split(color, key);
    if (!part) return nullptr;
    auto* mpi_part = static_cast<MpiCommunicator*>(part.release());
    return std::make_unique<NcclCommunicator>(std::unique_ptr<MpiCommunicator>(mpi_part));
  }

  void set_timeout(std::chrono::milliseconds timeout) override { mpi_->set_timeout(timeout); }
  std::chrono::milliseconds timeout() const override { return mpi_->timeout(); }

 private:
  std::string label() const { return rank_label(kBackend, rank()); }

  void check_nccl(ncclResult_t result, std::string_view what) const {
    if (result == ncclSuccess) return;
    const char* last = ncclGetLastError(comm_);
    throw CommError(label() + ": " + std::string(what) + " failed: " + ncclGetErrorString(result) +
                    (last != nullptr && *last != '\0' ? std::string(" (") + last + ")" : std::string()));
  }

  void check_cuda(cudaError_t status, std::string_view what) const {
    if (status != cudaSuccess) {
      throw CommError(label() + ": " + std::string(what) + " failed: " + cudaGetErrorString(status));
    }
  }

  void check_rank(int peer, std::string_view what) const {
    if (peer < 0 || peer >= size()) {
      throw CommError(label() + ": " + std::string(what) + " " + std::to_string(peer) +
                      " is not a rank of this communicator of size " + std::to_string(size()));
    }
  }

  void check_usable(std::string_view what) const {
    if (broken_) {
      throw CommError(label() + ": " + std::string(what) + " on an NCCL communicator that was aborted after " +
                      broken_reason_ + "; create a new communicator");
    }
  }

  // One GPU per rank: the local rank's device, or device 0 where each rank sees one GPU
  // (CUDA_VISIBLE_DEVICES set per rank). Every rank shares what it found before any rank
  // refuses, so that all ranks fail together, with the same message, instead of some hanging.
  void select_device() {
    DeviceIdentity mine;
    gethostname(mine.host.data(), mine.host.size() - 1);
    if (cudaGetDeviceCount(&mine.devices) != cudaSuccess) {
      cudaGetLastError();
      mine.devices = 0;
    }
    mine.device = mine.devices == 1 ? 0 : local_rank();
    if (mine.device < mine.devices) {
      check_cuda(cudaSetDevice(mine.device), "cudaSetDevice");
      check_cuda(cudaDeviceGetPCIBusId(mine.pci_bus.data(), static_cast<int>(mine.pci_bus.size()) - 1, mine.device),
                 "cudaDeviceGetPCIBusId");
    }
    std::vector<DeviceIdentity> all(size());
    mpi_->allgather(BufferView{&mine, sizeof(mine), DataType::kUInt8, MemoryKind::kHost},
                    BufferView{all.data(), sizeof(DeviceIdentity) * all.size(), DataType::kUInt8, MemoryKind::kHost});
    for (int r = 0; r < size(); ++r) {
      if (all[r].devices == 0) {
        throw CommError(label() + ": rank " + std::to_string(r) + " on host " + all[r].host.data() +
                        " sees no CUDA device, but the nccl backend needs one GPU per rank; use the mpi backend on "
                        "machines without a GPU");
      }
      if (all[r].device >= all[r].devices) {
        throw CommError(label() + ": rank " + std::to_string(r) + " is local rank " + std::to_string(all[r].device) +
                        " on host " + all[r].host.data() + ", which has only " + std::to_string(all[r].devices) +
                        " GPUs; NCCL needs one GPU per rank: start at most " + std::to_string(all[r].devices) +
                        " ranks per node, or use the mpi backend");
      }
    }
    for (int a = 0; a < size(); ++a) {
      for (int b = a + 1; b < size(); ++b) {
        if (std::strcmp(all[a].host.data(), all[b].host.data()) == 0 &&
            std::strcmp(all[a].pci_bus.data(), all[b].pci_bus.data()) == 0) {
          throw CommError(label() + ": ranks " + std::to_string(a) + " and " + std::to_string(b) +
                          " both drive GPU " + all[a].pci_bus.data() + " on host " + all[a].host.data() +
                          "; NCCL needs one GPU per rank: start one rank per GPU, or use the mpi backend (on a "
                          "one-GPU machine, test the nccl backend with one rank)");
        }
      }
    }
    device_ = mine.device;
  }

  template <typename Launch>
  void run(const CollectiveCall& call, Launch&& launch) {
    check_usable(call.describe());
    mpi_->check_arrival(call);  // names the ranks not heard from, before NCCL could hang
    std::vector<int> everyone;
    for (int r = 0; r < size(); ++r) {
      if (r != rank()) everyone.push_back(r);
    }
    launch_and_wait(call.describe(), everyone, std::forward<Launch>(launch));
  }

  // Runs `launch` on this communicator's stream after the work already queued on the legacy
  // default stream (which waits for all blocking streams), then waits for it within the timeout.
  template <typename Launch>
  void launch_and_wait(const std::string& what, const std::vector<int>& peers, Launch&& launch) {
    check_usable(what);
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaEventRecord(ready_, cudaStreamLegacy), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
    check_nccl(launch(), what);
    check_cuda(cudaEventRecord(done_, stream_), "cudaEventRecord");
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + mpi_->timeout();
    while (true) {
      const cudaError_t state = cudaEventQuery(done_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) {
        abort_communicator(what + " failed on the GPU: " + cudaGetErrorString(state));
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        abort_communicator(what + " failed in NCCL: " + ncclGetErrorString(async));
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        broken_ = true;
        broken_reason_ = what + " timed out after " + std::to_string(mpi_->timeout().count()) + " ms";
        ncclCommAbort(comm_);
        comm_ = nullptr;
        throw CommTimeout(label() + ": " + broken_reason_ + " in NCCL after every rank arrived; waiting for rank" +
                          (peers.size() > 1 ? "s " : " ") + join_ranks(peers) +
                          ". A peer may have failed on its GPU; raise the timeout (set_timeout, "
                          "LETHE_COMM_TIMEOUT_S) if the transfer is merely slow");
      }
      if (now - start > std::chrono::milliseconds(100)) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  [[noreturn]] void abort_communicator(const std::string& reason) {
    broken_ = true;
    broken_reason_ = reason;
    ncclCommAbort(comm_);
    comm_ = nullptr;
    throw CommError(label() + ": " + reason + "; the NCCL communicator was aborted");
  }

  std::unique_ptr<MpiCommunicator> mpi_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  cudaEvent_t done_ = nullptr;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<MpiCommunicator> bootstrap) {
  return std::make_unique<NcclCommunicator>(std::move(bootstrap));
}

}  // namespace lethe::comm

#else

namespace lethe::comm {

bool nccl_built() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<MpiCommunicator> bootstrap) {
  throw CommError("rank " + std::to_string(bootstrap ? bootstrap->rank() : 0) +
                  ": this build of Lethe has no nccl backend (CMake did not find CUDA and NCCL, or "
                  "LETHE_WITH_NCCL=OFF); use the mpi backend, or rebuild where CUDA and NCCL are installed");
}

}  // namespace lethe::comm

#endif
