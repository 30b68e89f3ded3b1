#include "trainer/trunk.h"

#include <torch/script.h>

#include <mutex>

#include "storage/hashing.h"
#include "trainer/error.h"

namespace lethe::trainer {

namespace {

// The first line of a c10::Error (the rest is a C++ backtrace).
std::string first_line(const std::string& what) { return what.substr(0, what.find('\n')); }

}  // namespace

struct Trunk::Impl {
  std::filesystem::path file;
  std::string sha256;
  mutable torch::jit::Module module;
  // One forward at a time: the models of a job share one trunk, and libtorch does not document a
  // scripted module's forward as safe to run concurrently.
  mutable std::mutex mutex;
};

Trunk::Trunk(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trunk::~Trunk() = default;

std::shared_ptr<const Trunk> Trunk::load(const std::filesystem::path& file, const std::string& device,
                                         const std::string& expected_sha256) {
  if (!std::filesystem::is_regular_file(file)) {
    throw TrainerError(ErrorKind::kNotFound, "model.trunk: " + file.string() +
                                                 " does not exist or is not a file; save the PyTorch trunk with "
                                                 "torch.jit.save (docs/BACKBONE.md) or fix the path");
  }
  auto impl = std::make_unique<Impl>();
  impl->file = file;
  impl->sha256 = storage::sha256_file(file);
  if (!expected_sha256.empty() && impl->sha256 != expected_sha256) {
    throw TrainerError(ErrorKind::kMismatch,
                       "model.trunk: " + file.string() + " changed after it was configured (SHA-256 " +
                           impl->sha256.substr(0, 16) + "…, expected " + expected_sha256.substr(0, 16) +
                           "…): a job's trunk is frozen with it. Restore the file, or pretrain and train a new job "
                           "for the new trunk");
  }
  try {
    impl->module = torch::jit::load(file.string(), device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU));
  } catch (const c10::Error& e) {
    throw TrainerError(ErrorKind::kInvalidInput, "model.trunk: " + file.string() +
                                                     " is not a TorchScript file that this libtorch can load (" +
                                                     first_line(e.what()) +
                                                     "); save the module with torch.jit.save(torch.jit.script(m) or "
                                                     "torch.jit.trace(m, example), path) (docs/BACKBONE.md)");
  }
  impl->module.eval();
  for (auto parameter : impl->module.parameters()) parameter.set_requires_grad(false);
  return std::shared_ptr<const Trunk>(new Trunk(std::move(impl)));
}

const std::filesystem::path& Trunk::file() const { return impl_->file; }
const std::string& Trunk::sha256() const { return impl_->sha256; }

at::Tensor Trunk::forward(const at::Tensor& inputs) const {
  torch::NoGradGuard no_grad;
  std::lock_guard lock(impl_->mutex);
  torch::jit::IValue out;
  try {
    out = impl_->module.forward({inputs});
  } catch (const std::exception& e) {
    throw TrainerError(ErrorKind::kInvalidInput, "model.trunk: " + impl_->file.string() + " failed on a batch of shape " +
                                                     c10::str(inputs.sizes()) + ": " + first_line(e.what()));
  }
  if (!out.isTensor()) {
    throw TrainerError(ErrorKind::kInvalidInput, "model.trunk: " + impl_->file.string() + " returned a " +
                                                     out.tagKind() + ", not a tensor; its forward must return one "
                                                     "tensor [N, D] or [N, C, H, W]");
  }
  return out.toTensor().to(torch::kFloat32);
}

std::vector<std::int64_t> probe_trunk_output(const Trunk& trunk, const std::vector<std::int64_t>& input_shape) {
  std::vector<std::int64_t> batch_shape{2};
  batch_shape.insert(batch_shape.end(), input_shape.begin(), input_shape.end());
  const auto out = trunk.forward(torch::zeros(batch_shape, torch::kFloat32));
  if ((out.dim() != 2 && out.dim() != 4) || out.size(0) != 2 || out.numel() == 0) {
    throw TrainerError(ErrorKind::kInvalidInput,
                       "model.trunk: " + trunk.file().string() + " maps a batch " + c10::str(c10::IntArrayRef(batch_shape)) + " to " +
                           c10::str(out.sizes()) + "; Lethe's blocks take [N, D] or [N, C, H, W] with the batch "
                           "first (docs/BACKBONE.md)");
  }
  const auto sizes = out.sizes();
  return {sizes.begin() + 1, sizes.end()};
}

}  // namespace lethe::trainer
