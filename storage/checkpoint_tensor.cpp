#include "storage/checkpoint_tensor.h"

#include <limits>

namespace lethe::storage {

std::size_t element_size(TensorType type) {
  switch (type) {
    case TensorType::kFloat32: return 4;
    case TensorType::kFloat64: return 8;
    case TensorType::kInt64: return 8;
    case TensorType::kInt32: return 4;
    case TensorType::kUInt8: return 1;
  }
  throw StorageError("unknown tensor type code " + std::to_string(static_cast<int>(type)) +
                     ": expected float32, float64, int64, int32 or uint8");
}

std::string_view type_name(TensorType type) {
  switch (type) {
    case TensorType::kFloat32: return "float32";
    case TensorType::kFloat64: return "float64";
    case TensorType::kInt64: return "int64";
    case TensorType::kInt32: return "int32";
    case TensorType::kUInt8: return "uint8";
  }
  throw StorageError("unknown tensor type code " + std::to_string(static_cast<int>(type)) +
                     ": expected float32, float64, int64, int32 or uint8");
}

TensorType parse_tensor_type(std::string_view text) {
  for (TensorType type : {TensorType::kFloat32, TensorType::kFloat64, TensorType::kInt64, TensorType::kInt32,
                          TensorType::kUInt8})
    if (type_name(type) == text) return type;
  throw StorageError("unknown tensor type '" + std::string(text) +
                     "': expected float32, float64, int64, int32 or uint8");
}

std::int64_t TensorData::element_count() const {
  std::int64_t count = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0) throw StorageError("tensor '" + name + "' has a negative dimension " + std::to_string(dim));
    if (dim != 0 && count > std::numeric_limits<std::int64_t>::max() / dim)
      throw StorageError("tensor '" + name + "' has a shape whose element count overflows int64");
    count *= dim;
  }
  return count;
}

void TensorData::validate() const {
  if (name.empty()) throw StorageError("a tensor has an empty name: give every tensor a unique name");
  const std::int64_t count = element_count();
  const std::size_t esize = element_size(type);
  if (static_cast<std::uint64_t>(count) > std::numeric_limits<std::size_t>::max() / esize ||
      bytes.size() != static_cast<std::size_t>(count) * esize) {
    std::string dims;
    for (std::int64_t dim : shape) dims += (dims.empty() ? "" : ",") + std::to_string(dim);
    throw StorageError("tensor '" + name + "' of shape [" + dims + "] and type " + std::string(type_name(type)) +
                       " needs " + std::to_string(count) + " elements of " + std::to_string(esize) +
                       " bytes but holds " + std::to_string(bytes.size()) + " bytes: fix its shape or its data");
  }
}

void TensorData::require_type(TensorType wanted) const {
  if (type != wanted)
    throw StorageError("tensor '" + name + "' holds " + std::string(type_name(type)) + ", not " +
                       std::string(type_name(wanted)) + ": read it with the matching element type");
}

}  // namespace lethe::storage
