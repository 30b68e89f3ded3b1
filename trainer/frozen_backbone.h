// trainer/frozen_backbone.h — a job's frozen backbone as the routes share it when serving: one model
// in memory, used by one caller at a time (a prediction sets the model's adapters and head).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "trainer/model_config.h"

namespace lethe::trainer {

class LetheModel;  // trainer/model.h

class FrozenBackbone {
 public:
  // Loads `file` (checked against `config`, trainer/pretrain.h) onto `device` ("cpu" or "cuda"),
  // and the trunk `trunk_file` under it when `config` has one (its SHA-256 checked).
  FrozenBackbone(const ModelConfig& config, const std::filesystem::path& file, const std::filesystem::path& trunk_file,
                 const std::string& device);
  ~FrozenBackbone();
  FrozenBackbone(const FrozenBackbone&) = delete;
  FrozenBackbone& operator=(const FrozenBackbone&) = delete;

  // Runs `work` on the model while no other caller does; it must leave no adapter active.
  void use(const std::function<void(LetheModel&)>& work);
  [[nodiscard]] const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  std::unique_ptr<LetheModel> model_;
  std::mutex mutex_;
};

}  // namespace lethe::trainer
