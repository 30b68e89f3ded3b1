#include "comm/reduce.h"

#include <algorithm>
#include <cstdint>

namespace lethe::comm {
namespace {

template <typename T>
void reduce_typed(T* accumulator, const T* input, std::size_t count, ReduceOp op) {
  if (op == ReduceOp::kMax) {
    for (std::size_t i = 0; i < count; ++i) accumulator[i] = std::max(accumulator[i], input[i]);
  } else {
    for (std::size_t i = 0; i < count; ++i) accumulator[i] = static_cast<T>(accumulator[i] + input[i]);
  }
}

template <typename T>
void divide_typed(T* values, std::size_t count, int divisor) {
  for (std::size_t i = 0; i < count; ++i) values[i] = static_cast<T>(values[i] / static_cast<T>(divisor));
}

template <typename Function>
void dispatch(DataType type, Function&& function) {
  switch (type) {
    case DataType::kUInt8: return function(std::uint8_t{});
    case DataType::kInt32: return function(std::int32_t{});
    case DataType::kInt64: return function(std::int64_t{});
    case DataType::kFloat32: return function(float{});
    case DataType::kFloat64: return function(double{});
  }
  throw CommError("unknown DataType " + std::to_string(static_cast<int>(type)));
}

}  // namespace

void reduce_into(void* accumulator, const void* input, std::size_t count, DataType type, ReduceOp op) {
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    reduce_typed(static_cast<T*>(accumulator), static_cast<const T*>(input), count, op);
  });
}

void divide_in_place(void* values, std::size_t count, DataType type, int divisor) {
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    divide_typed(static_cast<T*>(values), count, divisor);
  });
}

}  // namespace lethe::comm
