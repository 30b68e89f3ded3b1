// trainer/error.h — the exception trainer/ throws, with a kind a caller can act on (as comm/ and
// storage/ have theirs): the message is for people, the kind for code; never match the message.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace lethe::trainer {

enum class ErrorKind {
  kInvalidInput,  // a setting, argument or input outside what is accepted; fix the input
  kNotFound,      // a job, model, section or checkpoint that does not exist
  kMismatch,      // the job's inputs changed under it: dataset, backbone, config or manifest content
  kConflict,      // another writer changed the job since this process loaded it
  kUnavailable,   // the model cannot answer now (e.g. an S3T ensemble with no live shard)
  kDamaged,       // a job file that cannot be read as what it should be
};
[[nodiscard]] std::string_view to_string(ErrorKind kind);

class TrainerError : public std::runtime_error {
 public:
  TrainerError(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  [[nodiscard]] ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace lethe::trainer
