#include "comm/tensor.h"

#include <sstream>
#include <string>

namespace lethe::comm {

DataType data_type(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Byte: return DataType::kUInt8;
    case c10::ScalarType::Int: return DataType::kInt32;
    case c10::ScalarType::Long: return DataType::kInt64;
    case c10::ScalarType::Float: return DataType::kFloat32;
    case c10::ScalarType::Double: return DataType::kFloat64;
    default: break;
  }
  throw CommError(std::string("tensor dtype ") + c10::toString(type) +
                  " is not supported by the communicator; convert it to uint8, int32, int64, float32 or float64");
}

BufferView buffer_view(const at::Tensor& tensor) {
  if (!tensor.defined()) throw CommError("the communicator got an undefined tensor");
  if (!tensor.is_contiguous()) {
    std::ostringstream shape;
    shape << "sizes " << tensor.sizes() << ", strides " << tensor.strides();
    throw CommError("the communicator needs a contiguous tensor, got one with " + shape.str() +
                    "; pass tensor.contiguous() and copy the result back");
  }
  BufferView view;
  view.data = tensor.data_ptr();
  view.count = static_cast<std::size_t>(tensor.numel());
  view.type = data_type(tensor.scalar_type());
  if (tensor.device().is_cpu()) {
    view.memory = MemoryKind::kHost;
  } else if (tensor.device().is_cuda()) {
    view.memory = MemoryKind::kCuda;
  } else {
    throw CommError("the communicator works on CPU and CUDA tensors, got one on " + tensor.device().str());
  }
  return view;
}

void allreduce(Communicator& comm, const at::Tensor& tensor, ReduceOp op) { comm.allreduce(buffer_view(tensor), op); }

void broadcast(Communicator& comm, const at::Tensor& tensor, int root) { comm.broadcast(buffer_view(tensor), root); }

void allgather(Communicator& comm, const at::Tensor& send, const at::Tensor& recv) {
  comm.allgather(buffer_view(send), buffer_view(recv));
}

void send(Communicator& comm, const at::Tensor& tensor, int peer, int tag) {
  comm.send(buffer_view(tensor), peer, tag);
}

void recv(Communicator& comm, const at::Tensor& tensor, int peer, int tag) {
  comm.recv(buffer_view(tensor), peer, tag);
}

}  // namespace lethe::comm
