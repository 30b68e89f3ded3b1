#include "trainer/model_config.h"

#include <stdexcept>

namespace lethe::trainer {

std::string to_string(Architecture architecture) {
  switch (architecture) {
    case Architecture::kMlp: return "mlp";
    case Architecture::kCnn: return "cnn";
    case Architecture::kConvnet: return "convnet";
  }
  return "unknown";
}

Architecture parse_architecture(const std::string& name) {
  if (name == "mlp") return Architecture::kMlp;
  if (name == "cnn") return Architecture::kCnn;
  if (name == "convnet") return Architecture::kConvnet;
  throw std::invalid_argument("model.architecture: '" + name + "' is not a backbone; use 'mlp', 'cnn' or 'convnet'");
}

int num_blocks(const ModelConfig& config) { return static_cast<int>(config.conv_widths.size() + config.widths.size()); }

namespace {

void check_widths(const std::vector<std::int64_t>& widths, const std::string& key) {
  for (std::size_t i = 0; i < widths.size(); ++i) {
    if (widths[i] <= 0) {
      throw std::invalid_argument(key + "[" + std::to_string(i) + "]: must be positive, got " + std::to_string(widths[i]));
    }
  }
}

}  // namespace

void validate(const ModelConfig& config) {
  if (config.widths.empty()) throw std::invalid_argument("model.widths: must list at least one block width");
  check_widths(config.widths, "model.widths");
  check_widths(config.conv_widths, "model.conv_widths");
  if (config.architecture == Architecture::kConvnet && config.conv_widths.empty())
    throw std::invalid_argument("model.conv_widths: a convnet needs at least one convolution block (e.g. [32, 64])");
  if (config.architecture != Architecture::kConvnet && !config.conv_widths.empty())
    throw std::invalid_argument("model.conv_widths: only architecture convnet has convolution blocks below widths");
  const int blocks = num_blocks(config);
  if (config.sites < 1 || config.sites > blocks) {
    throw std::invalid_argument("model.sites: " + std::to_string(config.sites) + " adapter sites need between 1 and " +
                                std::to_string(blocks) +
                                " blocks (one per entry of model.widths and model.conv_widths); add widths or lower the "
                                "slice count");
  }
  if (config.lora_rank < 1) throw std::invalid_argument("model.lora_rank: must be at least 1");
  if (!(config.lora_alpha > 0)) throw std::invalid_argument("model.lora_alpha: must be positive");
  if (config.num_classes < 2) throw std::invalid_argument("model.num_classes: must be at least 2");
  if (config.input_channels < 1 || config.input_height < 1 || config.input_width < 1) {
    throw std::invalid_argument("model.input: channels, height and width must be positive");
  }
}

nlohmann::json to_json(const ModelConfig& config) {
  return {{"architecture", to_string(config.architecture)},
          {"conv_widths", config.conv_widths},
          {"widths", config.widths},
          {"sites", config.sites},
          {"lora_rank", config.lora_rank},
          {"lora_alpha", config.lora_alpha},
          {"num_classes", config.num_classes},
          {"input_shape", {config.input_channels, config.input_height, config.input_width}}};
}

ModelConfig model_config_from_json(const nlohmann::json& json) {
  ModelConfig config;
  config.architecture = parse_architecture(json.at("architecture").get<std::string>());
  config.widths = json.at("widths").get<std::vector<std::int64_t>>();
  if (json.contains("conv_widths")) config.conv_widths = json.at("conv_widths").get<std::vector<std::int64_t>>();
  config.sites = json.at("sites").get<int>();
  config.lora_rank = json.at("lora_rank").get<std::int64_t>();
  config.lora_alpha = json.at("lora_alpha").get<double>();
  config.num_classes = json.at("num_classes").get<std::int64_t>();
  const auto shape = json.at("input_shape").get<std::vector<std::int64_t>>();
  if (shape.size() != 3) throw std::invalid_argument("model input_shape: expected [channels, height, width]");
  config.input_channels = shape[0];
  config.input_height = shape[1];
  config.input_width = shape[2];
  validate(config);
  return config;
}

}  // namespace lethe::trainer
