// trainer/model.h — the backbone family (MLP, strided CNN, or convnet: conv + pooling blocks under
// dense blocks; one LoRA-capable layer + ReLU per block) with L adapter sites on the top L blocks
// and a linear classification head. Site 1 is the top.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/lora.h"
#include "trainer/model_config.h"

namespace lethe::trainer {

class Trunk;  // trainer/trunk.h

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

class LetheModel : public torch::nn::Module {
 public:
  // Base weights and head from `init_seed` (PyTorch's default uniform init); adapters inactive, B = 0.
  LetheModel(ModelConfig config, std::uint64_t init_seed);

  [[nodiscard]] const ModelConfig& config() const { return config_; }
  [[nodiscard]] int num_blocks() const { return static_cast<int>(blocks_.size()); }
  [[nodiscard]] int num_sites() const { return config_.sites; }
  // Block index (0 = bottom) of adapter site `site` (1 = top).
  [[nodiscard]] int block_of_site(int site) const;

  // A model configured with a trunk (config().trunk) runs it under its blocks; attach the trunk
  // before the first forward. std::invalid_argument when its SHA-256 is not the configured one.
  void attach_trunk(std::shared_ptr<const Trunk> trunk);
  // The frozen trunk's output for records `x` [N, C, H, W], shaped as the bottom block takes it
  // (block_input_shape); `x` itself without a trunk. No gradients flow into the trunk.
  [[nodiscard]] torch::Tensor trunk_outputs(const torch::Tensor& x);
  // Logits from trunk outputs (what trunk_outputs returns): pretraining computes those once. With a
  // generator, pretraining's dropout as in run_blocks (survivors scaled by 1 / (1 - dropout)).
  [[nodiscard]] torch::Tensor forward_after_trunk(const torch::Tensor& t, double dropout = 0,
                                                  at::Generator* generator = nullptr);

  // Logits for inputs shaped [N, C, H, W] (or [N, C*H*W] for the MLP).
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x);
  // Runs blocks [first, end) on the input of block `first`; with a generator, dropout (probability
  // `dropout`) on the input of every dense block among them but the model's first block (raw records).
  [[nodiscard]] torch::Tensor run_blocks(torch::Tensor x, int first, int end, double dropout = 0,
                                         at::Generator* generator = nullptr);
  // Logits from the input of site `site`: only the blocks from that site up, then the head.
  [[nodiscard]] torch::Tensor forward_from_site(int site, const torch::Tensor& site_input);
  // Inputs of every site (element site-1), from one pass with the current adapter state.
  [[nodiscard]] std::vector<torch::Tensor> site_inputs(const torch::Tensor& x);
  // Penultimate features (the top block's output, flattened), as the head sees them.
  [[nodiscard]] torch::Tensor features(const torch::Tensor& x);

  // Sites 1..depth add their adapters; sites below are inactive (zero delta).
  void set_active_depth(int depth);
  [[nodiscard]] int active_depth() const { return active_depth_; }

  [[nodiscard]] LoraLayer& block(int index) { return *blocks_.at(static_cast<std::size_t>(index)); }
  [[nodiscard]] LoraLayer& site(int site) { return block(block_of_site(site)); }
  [[nodiscard]] torch::Tensor& head_weight() { return head_weight_; }
  [[nodiscard]] torch::Tensor& head_bias() { return head_bias_; }

  // Freezes everything, then makes only site `site`'s adapter (A, B) and the head trainable.
  [[nodiscard]] std::vector<torch::Tensor> select_trainable_for_step(int site);
  // Freezes adapters, makes every backbone block and the head trainable (pretraining).
  [[nodiscard]] std::vector<torch::Tensor> select_trainable_backbone();
  void freeze_all();

  // The mean of features() over the public records (what pretraining saw), subtracted before the
  // noisy-GD model normalizes features: centred features spread over the unit sphere instead of
  // crowding one orthant after the ReLU. Zeros until set.
  [[nodiscard]] const torch::Tensor& feature_mean() const { return feature_mean_; }
  void set_feature_mean(const torch::Tensor& mean);

  // Frozen weights: "blocks.<b>.weight", "blocks.<b>.bias", "head.weight", "head.bias".
  [[nodiscard]] NamedTensors backbone_and_head_tensors();
  // Copies backbone and head from `other` (same config), and shares its trunk; adapters are left as they are.
  void copy_backbone_and_head_from(LetheModel& other);

 private:
  ModelConfig config_;
  int first_dense_ = 0;  // index of the first dense block (its input is flattened); num_blocks() for a cnn
  std::vector<std::shared_ptr<LoraLayer>> blocks_;
  torch::Tensor head_weight_, head_bias_;
  torch::Tensor feature_mean_;
  std::shared_ptr<const Trunk> trunk_;  // frozen; shared by every model of a job on this rank
  int active_depth_ = 0;
};

// Number of head inputs (flattened output of the top block) for `config`.
[[nodiscard]] std::int64_t feature_dim(const ModelConfig& config);

}  // namespace lethe::trainer
