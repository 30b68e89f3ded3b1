// tests/comm/conformance.h — the one conformance suite every Communicator backend must pass:
// named checks, each run by every rank of a communicator, instantiated per backend by the test files.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/cuda.h"

namespace lethe::comm::testing {

// One check; `memory` is where the buffers of collectives live (host, or CUDA for the GPU paths).
struct ConformanceCheck {
  std::string name;
  void (*run)(Communicator& comm, MemoryKind memory);
};

[[nodiscard]] const std::vector<ConformanceCheck>& conformance_checks();

// Test names and gtest's parameter printouts show the check's name.
inline void PrintTo(const ConformanceCheck& check, std::ostream* out) { *out << check.name; }

[[nodiscard]] inline std::string check_name(const ::testing::TestParamInfo<ConformanceCheck>& info) {
  return info.param.name;
}

// Values kept on the host for filling and checking, mirrored in `memory` for the communicator.
template <typename T>
class TestBuffer {
 public:
  TestBuffer(std::size_t count, MemoryKind memory) : host_(count), memory_(memory) {
    if (memory_ == MemoryKind::kCuda) device_ = cuda_allocate(count * sizeof(T));
  }
  TestBuffer(const TestBuffer&) = delete;
  TestBuffer& operator=(const TestBuffer&) = delete;
  ~TestBuffer() {
    if (device_ != nullptr) cuda_free(device_);
  }

  [[nodiscard]] std::vector<T>& host() { return host_; }
  [[nodiscard]] std::size_t size() const { return host_.size(); }
  T& operator[](std::size_t i) { return host_[i]; }

  // The view the communicator gets, after copying host values to the device if needed.
  [[nodiscard]] BufferView view(DataType type) {
    if (device_ != nullptr) cuda_copy(device_, host_.data(), host_.size() * sizeof(T));
    return BufferView{device_ != nullptr ? device_ : host_.data(), host_.size(), type, memory_};
  }
  // Brings the communicator's result back to host(), for checking.
  void fetch() {
    if (device_ != nullptr) cuda_copy(host_.data(), device_, host_.size() * sizeof(T));
  }

 private:
  std::vector<T> host_;
  MemoryKind memory_;
  void* device_ = nullptr;
};

}  // namespace lethe::comm::testing
