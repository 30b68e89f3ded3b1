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

std::array<std::int64_t, 3> block_input_shape(const ModelConfig& config) {
  if (config.trunk && !config.trunk->output_shape.empty()) {
    const auto& out = config.trunk->output_shape;
    if (out.size() == 1) return {1, 1, out[0]};
    if (out.size() == 3) return {out[0], out[1], out[2]};
  }
  return {config.input_channels, config.input_height, config.input_width};
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

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[N";
  for (const auto d : shape) text += ", " + std::to_string(d);
  return text + "]";
}

}  // namespace

void validate_trunk(const ModelConfig& config, const std::string& name) {
  const auto& trunk = *config.trunk;
  if (trunk.sha256.size() != 64 || trunk.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw std::invalid_argument(name + ": the trunk's SHA-256 must be 64 lowercase hex digits, got '" + trunk.sha256 + "'");
  const auto& out = trunk.output_shape;
  if (out.empty()) return;  // not probed yet
  for (const auto d : out)
    if (d < 1) throw std::invalid_argument(name + ": its output shape " + shape_text(out) + " has an empty dimension");
  if (out.size() != 1 && out.size() != 3)
    throw std::invalid_argument(name + ": its output " + shape_text(out) +
                                " is neither [N, D] nor [N, C, H, W], which Lethe's blocks take");
  if (out.size() == 1 && config.architecture != Architecture::kMlp)
    throw std::invalid_argument(name + ": its output " + shape_text(out) + " has no spatial dimensions, but model.architecture " +
                                to_string(config.architecture) + " convolves [N, C, H, W]; use architecture mlp, or a "
                                "trunk that returns feature maps");
  if (out.size() == 3 && config.architecture == Architecture::kConvnet) {
    std::int64_t h = out[1], w = out[2];
    for (std::size_t i = 0; i < config.conv_widths.size(); ++i) h /= 2, w /= 2;
    if (h < 1 || w < 1)
      throw std::invalid_argument(name + ": its output " + shape_text(out) + " is too small for " +
                                  std::to_string(config.conv_widths.size()) +
                                  " convolution blocks with 2x2 pooling (model.conv_widths); use fewer, or "
                                  "architecture mlp");
  }
}

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
  if (config.trunk) validate_trunk(config, "model.trunk");
}

nlohmann::json to_json(const ModelConfig& config) {
  nlohmann::json json = {{"architecture", to_string(config.architecture)},
                          {"conv_widths", config.conv_widths},
                          {"widths", config.widths},
                          {"sites", config.sites},
                          {"lora_rank", config.lora_rank},
                          {"lora_alpha", config.lora_alpha},
                          {"num_classes", config.num_classes},
                          {"input_shape", {config.input_channels, config.input_height, config.input_width}}};
  // Only with a trunk, so that configs, backbones and checkpoints without one keep their JSON (and digests).
  if (config.trunk)
    json["trunk"] = {{"sha256", config.trunk->sha256},
                     {"input_shape", config.trunk->input_shape},
                     {"output_shape", config.trunk->output_shape}};
  return json;
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
  if (json.contains("trunk")) {
    const auto& trunk = json.at("trunk");
    config.trunk = TrunkSpec{trunk.at("sha256").get<std::string>(), trunk.at("input_shape").get<std::vector<std::int64_t>>(),
                             trunk.at("output_shape").get<std::vector<std::int64_t>>()};
  }
  validate(config);
  return config;
}

}  // namespace lethe::trainer
