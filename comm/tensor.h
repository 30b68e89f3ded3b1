// comm/tensor.h — the Communicator on torch tensors: maps dtype to DataType and device to
// MemoryKind, and refuses tensors that are not one contiguous block (library lethe_comm_torch).
#pragma once

#include <ATen/core/Tensor.h>

#include "comm/communicator.h"

namespace lethe::comm {

// The tensor's storage as a BufferView. Throws CommError for a non-contiguous tensor (call
// .contiguous() and copy the result back), an unsupported dtype (uint8, int32, int64, float32 and
// float64 are supported), or a device other than CPU and CUDA.
[[nodiscard]] BufferView buffer_view(const at::Tensor& tensor);
[[nodiscard]] DataType data_type(c10::ScalarType type);

void allreduce(Communicator& comm, const at::Tensor& tensor, ReduceOp op);
void broadcast(Communicator& comm, const at::Tensor& tensor, int root);
// `recv` holds size() * send.numel() elements of send's dtype, in any shape.
void allgather(Communicator& comm, const at::Tensor& send, const at::Tensor& recv);
void send(Communicator& comm, const at::Tensor& tensor, int peer, int tag);
void recv(Communicator& comm, const at::Tensor& tensor, int peer, int tag);

}  // namespace lethe::comm
