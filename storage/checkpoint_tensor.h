// storage/checkpoint_tensor.h — a tensor as the checkpoint store sees it: a name, an element
// type, a shape and raw bytes, so that storage/ needs no torch (the trainer converts).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/error.h"

namespace lethe::storage {

// Checkpoint files, digests and TensorData::bytes hold elements in little-endian order.
static_assert(std::endian::native == std::endian::little, "lethe checkpoints assume a little-endian host");

enum class TensorType : std::uint8_t { kFloat32 = 1, kFloat64 = 2, kInt64 = 3, kInt32 = 4, kUInt8 = 5 };

[[nodiscard]] std::size_t element_size(TensorType type);
// "float32", "float64", "int64", "int32", "uint8".
[[nodiscard]] std::string_view type_name(TensorType type);
// Inverse of type_name; StorageError naming the text and the accepted names otherwise.
[[nodiscard]] TensorType parse_tensor_type(std::string_view text);

// The TensorType of a C++ element type (float, double, int64_t, int32_t, uint8_t).
template <typename T>
constexpr TensorType tensor_type_of();
template <> constexpr TensorType tensor_type_of<float>() { return TensorType::kFloat32; }
template <> constexpr TensorType tensor_type_of<double>() { return TensorType::kFloat64; }
template <> constexpr TensorType tensor_type_of<std::int64_t>() { return TensorType::kInt64; }
template <> constexpr TensorType tensor_type_of<std::int32_t>() { return TensorType::kInt32; }
template <> constexpr TensorType tensor_type_of<std::uint8_t>() { return TensorType::kUInt8; }

struct TensorData {
  std::string name;
  TensorType type = TensorType::kFloat32;
  std::vector<std::int64_t> shape;  // empty: a scalar (one element)
  std::vector<std::byte> bytes;     // element_count() * element_size(type) bytes, row-major

  // Product of the shape (1 for a scalar); StorageError for a negative or overflowing shape.
  [[nodiscard]] std::int64_t element_count() const;
  // Throws StorageError naming the tensor unless name, shape and byte count agree.
  void validate() const;

  // Copies `values` into a new tensor; StorageError if the shape does not hold that many.
  template <typename T>
  [[nodiscard]] static TensorData from_values(std::string name, std::vector<std::int64_t> shape,
                                              std::span<const T> values) {
    TensorData tensor{std::move(name), tensor_type_of<T>(), std::move(shape), {}};
    tensor.bytes.resize(values.size_bytes());
    if (!values.empty()) std::memcpy(tensor.bytes.data(), values.data(), values.size_bytes());
    tensor.validate();
    return tensor;
  }
  [[nodiscard]] static TensorData from_floats(std::string name, std::vector<std::int64_t> shape,
                                              std::span<const float> values) {
    return from_values<float>(std::move(name), std::move(shape), values);
  }

  // Copies the elements out; StorageError naming the tensor if T is not its element type.
  template <typename T>
  [[nodiscard]] std::vector<T> values() const {
    require_type(tensor_type_of<T>());
    std::vector<T> out(bytes.size() / sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
  [[nodiscard]] std::vector<float> floats() const { return values<float>(); }

 private:
  void require_type(TensorType wanted) const;
};

}  // namespace lethe::storage
