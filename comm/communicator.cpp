#include "comm/communicator.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"

namespace lethe::comm {

std::size_t element_size(DataType type) {
  switch (type) {
    case DataType::kUInt8: return 1;
    case DataType::kInt32: return 4;
    case DataType::kInt64: return 8;
    case DataType::kFloat32: return 4;
    case DataType::kFloat64: return 8;
  }
  throw CommError("unknown DataType " + std::to_string(static_cast<int>(type)));
}

std::string_view to_string(DataType type) {
  switch (type) {
    case DataType::kUInt8: return "uint8";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
  }
  return "unknown";
}

std::string_view to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAverage: return "average";
    case ReduceOp::kMax: return "max";
  }
  return "unknown";
}

std::chrono::milliseconds default_timeout() {
  const char* text = std::getenv("LETHE_COMM_TIMEOUT_S");
  if (text == nullptr || *text == '\0') return std::chrono::seconds(300);
  char* end = nullptr;
  errno = 0;
  const double seconds = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !std::isfinite(seconds) || seconds <= 0) {
    throw CommError(std::string("LETHE_COMM_TIMEOUT_S='") + text +
                    "' is not a positive number of seconds; unset it for the default of 300 s");
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(seconds * 1000)));
}

bool backend_available(std::string_view backend) {
  if (backend == "mpi") return true;
  if (backend == "nccl") return nccl_built();
  return false;
}

std::unique_ptr<Communicator> make_communicator(std::string_view backend) {
  if (backend == "mpi") return MpiCommunicator::world();
  if (backend == "nccl") {
    if (!nccl_built()) {
      throw CommError("the nccl backend is not in this build (CMake did not find CUDA and NCCL); use --backend mpi, "
                      "or rebuild where CUDA and NCCL are installed");
    }
    return make_nccl_communicator(MpiCommunicator::world());
  }
  throw CommError("unknown communicator backend '" + std::string(backend) +
                  "'; choose mpi or nccl (the in-process backend is made with make_in_process_world)");
}

}  // namespace lethe::comm
