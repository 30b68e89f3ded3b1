#include "trainer/model.h"

#include <cmath>
#include <stdexcept>

namespace lethe::trainer {

namespace {

// Output side of a 3x3, stride-2, padding-1 convolution.
std::int64_t conv_out(std::int64_t side) { return (side - 1) / 2 + 1; }

// Distinct seeds per block and for the head, derived from the model's init seed.
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t salt) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (salt + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::int64_t feature_dim(const ModelConfig& config) {
  if (config.architecture == Architecture::kMlp) return config.widths.back();
  std::int64_t h = config.input_height, w = config.input_width;
  for (std::size_t i = 0; i < config.widths.size(); ++i) {
    h = conv_out(h);
    w = conv_out(w);
  }
  return config.widths.back() * h * w;
}

LetheModel::LetheModel(ModelConfig config, std::uint64_t init_seed) : config_(std::move(config)) {
  validate(config_);
  std::int64_t in = config_.architecture == Architecture::kMlp
                        ? config_.input_channels * config_.input_height * config_.input_width
                        : config_.input_channels;
  for (std::size_t b = 0; b < config_.widths.size(); ++b) {
    const auto out = config_.widths[b];
    const auto seed = derive_seed(init_seed, b);
    auto layer = config_.architecture == Architecture::kMlp
                     ? LoraLayer::linear(in, out, config_.lora_rank, config_.lora_alpha, seed)
                     : LoraLayer::conv(in, out, config_.lora_rank, config_.lora_alpha, seed);
    blocks_.push_back(register_module("blocks_" + std::to_string(b), layer));
    in = out;
  }
  const auto features = feature_dim(config_);
  auto generator = make_cpu_generator(derive_seed(init_seed, 1000));
  const double bound = 1.0 / std::sqrt(static_cast<double>(features));
  head_weight_ = register_parameter(
      "head_weight", torch::rand({config_.num_classes, features}, generator, torch::kFloat32) * (2 * bound) - bound);
  head_bias_ = register_parameter("head_bias",
                                  torch::rand({config_.num_classes}, generator, torch::kFloat32) * (2 * bound) - bound);
  for (int s = 1; s <= config_.sites; ++s) site(s).reset_adapter(derive_seed(init_seed, 2000 + s));
  set_active_depth(0);
}

int LetheModel::block_of_site(int site) const {
  if (site < 1 || site > config_.sites) {
    throw std::out_of_range("adapter site " + std::to_string(site) + " does not exist: the model has sites 1.." +
                            std::to_string(config_.sites));
  }
  return num_blocks() - site;
}

torch::Tensor LetheModel::run_blocks(torch::Tensor x, int first, int end) {
  for (int b = first; b < end; ++b) {
    if (b == 0 && config_.architecture == Architecture::kMlp) x = x.flatten(1);
    x = torch::relu(blocks_[static_cast<std::size_t>(b)]->forward(x));
  }
  return x;
}

torch::Tensor LetheModel::features(const torch::Tensor& x) { return run_blocks(x, 0, num_blocks()).flatten(1); }

torch::Tensor LetheModel::forward(const torch::Tensor& x) {
  return torch::linear(features(x), head_weight_, head_bias_);
}

torch::Tensor LetheModel::forward_from_site(int site, const torch::Tensor& site_input) {
  auto top = run_blocks(site_input, block_of_site(site), num_blocks()).flatten(1);
  return torch::linear(top, head_weight_, head_bias_);
}

std::vector<torch::Tensor> LetheModel::site_inputs(const torch::Tensor& x) {
  std::vector<torch::Tensor> inputs(static_cast<std::size_t>(config_.sites));
  auto h = x;
  int done = 0;
  for (int s = config_.sites; s >= 1; --s) {  // bottom-most site first
    const int b = block_of_site(s);
    h = run_blocks(h, done, b);
    done = b;
    inputs[static_cast<std::size_t>(s - 1)] = (b == 0 && config_.architecture == Architecture::kMlp) ? h.flatten(1) : h;
  }
  return inputs;
}

void LetheModel::set_active_depth(int depth) {
  if (depth < 0 || depth > config_.sites) {
    throw std::out_of_range("active depth " + std::to_string(depth) + " is outside 0.." + std::to_string(config_.sites));
  }
  for (int s = 1; s <= config_.sites; ++s) site(s).set_active(s <= depth);
  active_depth_ = depth;
}

void LetheModel::freeze_all() {
  for (auto& p : parameters()) p.set_requires_grad(false);
}

std::vector<torch::Tensor> LetheModel::select_trainable_for_step(int s) {
  freeze_all();
  auto& layer = site(s);
  std::vector<torch::Tensor> trainable{layer.lora_a(), layer.lora_b(), head_weight_, head_bias_};
  for (auto& p : trainable) p.set_requires_grad(true);
  return trainable;
}

std::vector<torch::Tensor> LetheModel::select_trainable_backbone() {
  freeze_all();
  std::vector<torch::Tensor> trainable;
  for (auto& block : blocks_) {
    trainable.push_back(block->weight());
    trainable.push_back(block->bias());
  }
  trainable.push_back(head_weight_);
  trainable.push_back(head_bias_);
  for (auto& p : trainable) p.set_requires_grad(true);
  return trainable;
}

NamedTensors LetheModel::backbone_and_head_tensors() {
  NamedTensors tensors;
  for (std::size_t b = 0; b < blocks_.size(); ++b) {
    tensors.emplace_back("blocks." + std::to_string(b) + ".weight", blocks_[b]->weight());
    tensors.emplace_back("blocks." + std::to_string(b) + ".bias", blocks_[b]->bias());
  }
  tensors.emplace_back("head.weight", head_weight_);
  tensors.emplace_back("head.bias", head_bias_);
  return tensors;
}

void LetheModel::copy_backbone_and_head_from(LetheModel& other) {
  if (!(other.config_ == config_)) throw std::invalid_argument("copying weights between models of different configs");
  torch::NoGradGuard no_grad;
  auto mine = backbone_and_head_tensors();
  auto theirs = other.backbone_and_head_tensors();
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i].second.copy_(theirs[i].second);
}

}  // namespace lethe::trainer
