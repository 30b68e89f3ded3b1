// trainer/model_config.h — the plain, torch-free description of a Lethe model: backbone family,
// block widths, number of LoRA adapter sites, LoRA rank and scale, input shape and classes.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lethe::trainer {

enum class Architecture { kMlp, kCnn, kConvnet };

[[nodiscard]] std::string to_string(Architecture architecture);
// "mlp", "cnn" or "convnet"; std::invalid_argument naming the accepted values otherwise.
[[nodiscard]] Architecture parse_architecture(const std::string& name);

// A frozen TorchScript trunk under the blocks (`model.trunk`, trainer/trunk.h): its file's SHA-256,
// the per-record shape it takes (the dataset's feature shape) and the one it gives ([D] or
// [C, H, W]), which the blocks take instead of the records. The shapes are empty until the trunk
// is probed on a dataset (as input_* until the dataset is known).
struct TrunkSpec {
  std::string sha256;
  std::vector<std::int64_t> input_shape;
  std::vector<std::int64_t> output_shape;
  bool operator==(const TrunkSpec&) const = default;
};

struct ModelConfig {
  Architecture architecture = Architecture::kMlp;
  // convnet only: the convolution blocks, bottom to top, below the dense blocks of `widths`: output
  // channels of a 3x3 convolution (stride 1, padding 1), then ReLU and 2x2 max-pooling.
  std::vector<std::int64_t> conv_widths;
  // One entry per block, bottom to top: units of a dense layer (mlp; convnet, above its
  // convolutions), or output channels of a 3x3 stride-2 convolution (cnn). Every block is a layer
  // followed by ReLU.
  std::vector<std::int64_t> widths{256, 128, 128, 64};
  // L: the top `sites` blocks carry LoRA adapters; site 1 is the top block, nearest the head.
  int sites = 4;
  std::int64_t lora_rank = 4;
  double lora_alpha = 8.0;
  std::int64_t num_classes = 10;
  std::int64_t input_channels = 1;
  std::int64_t input_height = 28;
  std::int64_t input_width = 28;
  std::optional<TrunkSpec> trunk;  // none: the blocks take the records' features directly

  bool operator==(const ModelConfig&) const = default;
};

// Throws std::invalid_argument naming the offending field ("model.sites", ...) and the fix.
void validate(const ModelConfig& config);
// The trunk part of validate(): its SHA-256, and whether the blocks take its output shape (once
// probed). std::invalid_argument starting with `name` (e.g. "model.trunk FILE") naming both shapes.
void validate_trunk(const ModelConfig& config, const std::string& name);

// What the bottom block takes per record, as (channels, height, width): the trunk's output when
// there is one ([D] as (1, 1, D)), the input shape otherwise.
[[nodiscard]] std::array<std::int64_t, 3> block_input_shape(const ModelConfig& config);

// Blocks of the model, bottom to top: conv_widths then widths (convnet), or widths.
[[nodiscard]] int num_blocks(const ModelConfig& config);

// Stable JSON form (recorded in checkpoints and backbone files, and hashed into digests).
[[nodiscard]] nlohmann::json to_json(const ModelConfig& config);
[[nodiscard]] ModelConfig model_config_from_json(const nlohmann::json& json);

}  // namespace lethe::trainer
