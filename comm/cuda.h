// comm/cuda.h — the few CUDA runtime calls comm needs (device count, copies, allocation), which
// compile to clear errors in a build without CUDA so that callers need no #ifdef of their own.
#pragma once

#include <cstddef>

namespace lethe::comm {

// Whether this build was compiled against the CUDA runtime.
[[nodiscard]] bool cuda_built();
// CUDA devices this process sees; 0 without CUDA, without a driver, or without a GPU.
[[nodiscard]] int cuda_device_count();
// Waits for all work queued on the current device, whatever stream it was queued on.
void cuda_synchronize();
// Copies `bytes` between any mix of host and device memory (unified addressing).
void cuda_copy(void* destination, const void* source, std::size_t bytes);
[[nodiscard]] void* cuda_allocate(std::size_t bytes);
void cuda_free(void* pointer) noexcept;

}  // namespace lethe::comm
