#include "trainer/frozen_backbone.h"

#include "trainer/model.h"
#include "trainer/pretrain.h"
#include "trainer/trunk.h"

namespace lethe::trainer {

FrozenBackbone::FrozenBackbone(const ModelConfig& config, const std::filesystem::path& file,
                               const std::filesystem::path& trunk_file, const std::string& device)
    : config_(config), model_(std::make_unique<LetheModel>(config, 0)) {
  load_backbone(*model_, file);
  if (config.trunk) model_->attach_trunk(Trunk::load(trunk_file, device, config.trunk->sha256));
  model_->to(device == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU));
}

FrozenBackbone::~FrozenBackbone() = default;

void FrozenBackbone::use(const std::function<void(LetheModel&)>& work) {
  std::lock_guard lock(mutex_);
  work(*model_);
  model_->set_active_depth(0);
}

}  // namespace lethe::trainer
