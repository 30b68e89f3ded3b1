// trainer/trunk.h — a frozen PyTorch trunk (`model.trunk`, docs/BACKBONE.md): a TorchScript file
// (torch.jit.save in PyTorch) that maps a batch of records' features [N, *feature_shape] (float32;
// uint8 data scaled to [0, 1]) to [N, D] or [N, C, H, W]. Lethe's blocks and head sit on its
// output; it is never trained, and the activation cache runs it once per record.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace lethe::trainer {

class Trunk {
 public:
  // Loads `file` onto `device` ("cpu" or "cuda"). TrainerError: kNotFound when the file is missing,
  // kInvalidInput naming the file when it is not TorchScript, kMismatch when `expected_sha256` is
  // given and the file's SHA-256 differs (the trunk changed after the job was configured).
  [[nodiscard]] static std::shared_ptr<const Trunk> load(const std::filesystem::path& file, const std::string& device,
                                                         const std::string& expected_sha256 = {});
  ~Trunk();
  Trunk(const Trunk&) = delete;
  Trunk& operator=(const Trunk&) = delete;

  [[nodiscard]] const std::filesystem::path& file() const;
  [[nodiscard]] const std::string& sha256() const;
  // The trunk's output for `inputs` [N, *input_shape], without gradients, on the trunk's device.
  // TrainerError (kInvalidInput) naming the file when the module fails or returns no tensor.
  [[nodiscard]] at::Tensor forward(const at::Tensor& inputs) const;

 private:
  struct Impl;
  explicit Trunk(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The trunk's per-record output shape for records of `input_shape`, from a probe batch of two zero
// records: [D] or [C, H, W]. TrainerError (kInvalidInput) naming the file and the shape otherwise.
[[nodiscard]] std::vector<std::int64_t> probe_trunk_output(const Trunk& trunk, const std::vector<std::int64_t>& input_shape);

}  // namespace lethe::trainer
