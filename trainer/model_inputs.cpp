#include "trainer/model_inputs.h"

#include <torch/torch.h>

#include <stdexcept>
#include <string>

namespace lethe::trainer {

at::Tensor to_model_inputs(const at::Tensor& values, storage::FeatureType type, const ModelConfig& config) {
  const auto width = config.input_channels * config.input_height * config.input_width;
  if (values.dim() != 2 || values.size(1) != width) {
    throw std::invalid_argument("model inputs: expected rows of " + std::to_string(width) + " values (" +
                                std::to_string(config.input_channels) + "x" + std::to_string(config.input_height) + "x" +
                                std::to_string(config.input_width) + "), got shape " + std::to_string(values.dim()) + "-D" +
                                (values.dim() == 2 ? " with " + std::to_string(values.size(1)) + " columns" : std::string()));
  }
  auto inputs = values.to(torch::kCPU).to(torch::kFloat32);
  if (type == storage::FeatureType::uint8) {
    inputs = inputs.div(255.0);
  } else if (inputs.data_ptr() == values.data_ptr()) {
    inputs = inputs.clone();  // never alias the caller's buffer
  }
  return inputs.reshape({values.size(0), config.input_channels, config.input_height, config.input_width}).contiguous();
}

}  // namespace lethe::trainer
