#include "trainer/model.h"

#include <cmath>
#include <stdexcept>

#include "trainer/trunk.h"

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

// The first dense block (flattened input): 0 for an MLP, after the convolutions of a convnet; a
// cnn has none (its blocks are all convolutions).
int first_dense_block(const ModelConfig& config) {
  switch (config.architecture) {
    case Architecture::kMlp: return 0;
    case Architecture::kCnn: return num_blocks(config);
    case Architecture::kConvnet: return static_cast<int>(config.conv_widths.size());
  }
  return 0;
}

}  // namespace

std::int64_t feature_dim(const ModelConfig& config) {
  if (config.architecture != Architecture::kCnn) return config.widths.back();
  const auto [c, h0, w0] = block_input_shape(config);
  std::int64_t h = h0, w = w0;
  for (std::size_t i = 0; i < config.widths.size(); ++i) {
    h = conv_out(h);
    w = conv_out(w);
  }
  return config.widths.back() * h * w;
}

LetheModel::LetheModel(ModelConfig config, std::uint64_t init_seed) : config_(std::move(config)) {
  validate(config_);
  first_dense_ = first_dense_block(config_);
  const bool convnet = config_.architecture == Architecture::kConvnet;
  auto [channels, h, w] = block_input_shape(config_);
  std::vector<std::int64_t> widths = config_.conv_widths;
  widths.insert(widths.end(), config_.widths.begin(), config_.widths.end());
  std::int64_t in = first_dense_ == 0 ? channels * h * w : channels;
  for (std::size_t b = 0; b < widths.size(); ++b) {
    const auto out = widths[b];
    const auto seed = derive_seed(init_seed, b);
    std::shared_ptr<LoraLayer> layer;
    if (static_cast<int>(b) >= first_dense_) {
      layer = LoraLayer::linear(in, out, config_.lora_rank, config_.lora_alpha, seed);
      in = out;
    } else {
      layer = LoraLayer::conv(in, out, config_.lora_rank, config_.lora_alpha, seed, convnet ? 1 : 2);
      h = convnet ? h / 2 : conv_out(h);  // a convnet block pools 2x2; a cnn block strides 2
      w = convnet ? w / 2 : conv_out(w);
      // The next block is dense: it takes the flattened channels x height x width.
      in = static_cast<int>(b) + 1 == first_dense_ ? out * h * w : out;
    }
    blocks_.push_back(register_module("blocks_" + std::to_string(b), layer));
  }
  const auto features = feature_dim(config_);
  auto generator = make_cpu_generator(derive_seed(init_seed, 1000));
  const double bound = 1.0 / std::sqrt(static_cast<double>(features));
  head_weight_ = register_parameter(
      "head_weight", torch::rand({config_.num_classes, features}, generator, torch::kFloat32) * (2 * bound) - bound);
  head_bias_ = register_parameter("head_bias",
                                  torch::rand({config_.num_classes}, generator, torch::kFloat32) * (2 * bound) - bound);
  for (int s = 1; s <= config_.sites; ++s) site(s).reset_adapter(derive_seed(init_seed, 2000 + s));
  feature_mean_ = register_buffer("feature_mean", torch::zeros({features}));
  set_active_depth(0);
}

void LetheModel::set_feature_mean(const torch::Tensor& mean) {
  if (mean.dim() != 1 || mean.size(0) != feature_mean_.size(0)) {
    throw std::invalid_argument("feature mean of shape " + c10::str(mean.sizes()) + " for a model with " +
                                std::to_string(feature_mean_.size(0)) + " features");
  }
  torch::NoGradGuard no_grad;
  feature_mean_.copy_(mean.to(feature_mean_.device()).to(torch::kFloat32));
}

int LetheModel::block_of_site(int site) const {
  if (site < 1 || site > config_.sites) {
    throw std::out_of_range("adapter site " + std::to_string(site) + " does not exist: the model has sites 1.." +
                            std::to_string(config_.sites));
  }
  return num_blocks() - site;
}

torch::Tensor LetheModel::run_blocks(torch::Tensor x, int first, int end, double dropout, at::Generator* generator) {
  const bool pools = config_.architecture == Architecture::kConvnet;
  for (int b = first; b < end; ++b) {
    if (b == first_dense_) x = x.flatten(1);
    if (generator != nullptr && dropout > 0 && b >= first_dense_ && b > 0) {
      // Inverted dropout with masks from the caller's (CPU) generator: reproducible for a seed, the
      // same masks on either device.
      const auto keep = torch::empty(x.sizes()).bernoulli_(1.0 - dropout, *generator).to(x.device());
      x = x * keep / (1.0 - dropout);
    }
    x = blocks_[static_cast<std::size_t>(b)]->forward(x);
    // Pooling before the ReLU gives the same values and gradients (the two commute) with the ReLU on
    // a quarter of the elements (bench/s3t/conv_layout.py).
    if (pools && b < first_dense_) x = torch::max_pool2d(x, 2);
    x = torch::relu(x);
  }
  return x;
}

void LetheModel::attach_trunk(std::shared_ptr<const Trunk> trunk) {
  if (!config_.trunk) throw std::invalid_argument("attaching a trunk to a model configured without one (model.trunk)");
  if (!trunk || trunk->sha256() != config_.trunk->sha256) {
    throw std::invalid_argument("the trunk " + (trunk ? trunk->file().string() : std::string("(none)")) +
                                " is not the one this model was configured with (SHA-256 " +
                                config_.trunk->sha256.substr(0, 16) + "…)");
  }
  trunk_ = std::move(trunk);
}

torch::Tensor LetheModel::trunk_outputs(const torch::Tensor& x) {
  if (!config_.trunk) return x;
  if (!trunk_) throw std::logic_error("the model's trunk (model.trunk) was never attached (LetheModel::attach_trunk)");
  std::vector<std::int64_t> shape{x.size(0)};
  shape.insert(shape.end(), config_.trunk->input_shape.begin(), config_.trunk->input_shape.end());
  const auto [c, h, w] = block_input_shape(config_);
  return trunk_->forward(x.reshape(shape)).reshape({x.size(0), c, h, w});
}

torch::Tensor LetheModel::forward_after_trunk(const torch::Tensor& t, double dropout, at::Generator* generator) {
  return torch::linear(run_blocks(t, 0, num_blocks(), dropout, generator).flatten(1), head_weight_, head_bias_);
}

torch::Tensor LetheModel::features(const torch::Tensor& x) {
  return run_blocks(trunk_outputs(x), 0, num_blocks()).flatten(1);
}

torch::Tensor LetheModel::forward(const torch::Tensor& x) { return forward_after_trunk(trunk_outputs(x)); }

torch::Tensor LetheModel::forward_from_site(int site, const torch::Tensor& site_input) {
  auto top = run_blocks(site_input, block_of_site(site), num_blocks()).flatten(1);
  return torch::linear(top, head_weight_, head_bias_);
}

std::vector<torch::Tensor> LetheModel::site_inputs(const torch::Tensor& x) {
  std::vector<torch::Tensor> inputs(static_cast<std::size_t>(config_.sites));
  auto h = trunk_outputs(x);
  int done = 0;
  for (int s = config_.sites; s >= 1; --s) {  // bottom-most site first
    const int b = block_of_site(s);
    h = run_blocks(h, done, b);
    done = b;
    inputs[static_cast<std::size_t>(s - 1)] = b == first_dense_ ? h.flatten(1) : h;
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
  tensors.emplace_back("features.mean", feature_mean_);
  return tensors;
}

void LetheModel::copy_backbone_and_head_from(LetheModel& other) {
  if (!(other.config_ == config_)) throw std::invalid_argument("copying weights between models of different configs");
  torch::NoGradGuard no_grad;
  auto mine = backbone_and_head_tensors();
  auto theirs = other.backbone_and_head_tensors();
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i].second.copy_(theirs[i].second);
  trunk_ = other.trunk_;  // frozen and shared: the copy runs the same trunk
}

}  // namespace lethe::trainer
