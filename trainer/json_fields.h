// trainer/json_fields.h — typed reads of the JSON records a job stores (manifest, its sections,
// config.json): a missing key or a wrong type is a TrainerError (kDamaged) naming the file and the
// key path ("routes.s3t.shards[2].plan"), never a bare nlohmann exception.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "trainer/error.h"

namespace lethe::trainer {

class JsonFields {
 public:
  // `object` must outlive this reader; `origin` names the file in errors.
  JsonFields(const nlohmann::json& object, std::string origin, std::string prefix = "")
      : object_(object), origin_(std::move(origin)), prefix_(std::move(prefix)) {
    if (!object_.is_object()) fail("", "expected a JSON object, got " + std::string(object_.type_name()));
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw TrainerError(ErrorKind::kDamaged, origin_ + ": " + prefix_ + key + ": " + what +
                                                "; the job directory is damaged or was written by another Lethe");
  }
  [[nodiscard]] bool has(const std::string& key) const { return object_.contains(key) && !object_.at(key).is_null(); }
  [[nodiscard]] const nlohmann::json& raw(const std::string& key) const {
    if (!object_.contains(key)) fail(key, "missing");
    return object_.at(key);
  }
  template <typename T>
  [[nodiscard]] T get(const std::string& key) const {
    const auto& value = raw(key);
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception& e) {
      fail(key, std::string("has the wrong type (") + e.what() + ")");
    }
  }
  [[nodiscard]] JsonFields child(const std::string& key) const { return JsonFields(raw(key), origin_, prefix_ + key + "."); }
  // Element `index` of the array at `key`, as an object reader.
  [[nodiscard]] JsonFields element(const std::string& key, std::size_t index) const {
    const auto& array = raw(key);
    if (!array.is_array() || index >= array.size()) fail(key, "expected an array with an element " + std::to_string(index));
    return JsonFields(array.at(index), origin_, prefix_ + key + "[" + std::to_string(index) + "].");
  }
  [[nodiscard]] std::size_t size_of(const std::string& key) const {
    const auto& array = raw(key);
    if (!array.is_array()) fail(key, "expected an array");
    return array.size();
  }
  [[nodiscard]] std::string where(const std::string& key) const { return origin_ + ": " + prefix_ + key; }

 private:
  const nlohmann::json& object_;
  std::string origin_;
  std::string prefix_;
};

}  // namespace lethe::trainer
