#include "comm/cuda.h"

#include <string>

#include "comm/communicator.h"

#ifdef LETHE_COMM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lethe::comm {

#ifdef LETHE_COMM_WITH_CUDA

namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw CommError(std::string(call) + " failed: " + cudaGetErrorString(status));
  }
}

}  // namespace

bool cuda_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error, report none
    return 0;
  }
  return count;
}

void cuda_synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

void cuda_copy(void* destination, const void* source, std::size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpy(destination, source, bytes, cudaMemcpyDefault), "cudaMemcpy");
}

void* cuda_allocate(std::size_t bytes) {
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes == 0 ? 1 : bytes), "cudaMalloc");
  return pointer;
}

void cuda_free(void* pointer) noexcept { cudaFree(pointer); }

#else

namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw CommError(std::string(what) +
                  ": this build of Lethe has no CUDA support; rebuild with the CUDA toolkit found by CMake, or use "
                  "host buffers");
}

}  // namespace

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }
void cuda_copy(void*, const void*, std::size_t) { no_cuda("copying a CUDA buffer"); }
void* cuda_allocate(std::size_t) { no_cuda("allocating a CUDA buffer"); }
void cuda_free(void*) noexcept {}

#endif

}  // namespace lethe::comm
