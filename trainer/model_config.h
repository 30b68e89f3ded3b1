// trainer/model_config.h — the plain, torch-free description of a Lethe model: backbone family,
// block widths, number of LoRA adapter sites, LoRA rank and scale, input shape and classes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace lethe::trainer {

enum class Architecture { kMlp, kCnn };

[[nodiscard]] std::string to_string(Architecture architecture);
// "mlp" or "cnn"; std::invalid_argument naming the accepted values otherwise.
[[nodiscard]] Architecture parse_architecture(const std::string& name);

struct ModelConfig {
  Architecture architecture = Architecture::kMlp;
  // One entry per backbone block, bottom to top: units of an MLP layer, or output channels of
  // a 3x3 stride-2 convolution. Every block is a layer followed by ReLU.
  std::vector<std::int64_t> widths{256, 128, 128, 64};
  // L: the top `sites` blocks carry LoRA adapters; site 1 is the top block, nearest the head.
  int sites = 4;
  std::int64_t lora_rank = 4;
  double lora_alpha = 8.0;
  std::int64_t num_classes = 10;
  std::int64_t input_channels = 1;
  std::int64_t input_height = 28;
  std::int64_t input_width = 28;

  bool operator==(const ModelConfig&) const = default;
};

// Throws std::invalid_argument naming the offending field ("model.sites", ...) and the fix.
void validate(const ModelConfig& config);

// Stable JSON form (recorded in checkpoints and backbone files, and hashed into digests).
[[nodiscard]] nlohmann::json to_json(const ModelConfig& config);
[[nodiscard]] ModelConfig model_config_from_json(const nlohmann::json& json);

}  // namespace lethe::trainer
