// trainer/lora.h — a frozen linear or 3x3 conv layer with a LoRA adapter: y = W x + b + (α/r) B A x.
// B starts at zero, so a fresh adapter leaves the frozen layer unchanged; inactive adapters add nothing.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lethe::trainer {

// Deterministic CPU generator for parameter initialization (independent of torch's global seed,
// so that thread ranks and concurrent jobs never share random state).
[[nodiscard]] at::Generator make_cpu_generator(std::uint64_t seed);

class LoraLayer : public torch::nn::Module {
 public:
  enum class Kind { kLinear, kConv };

  // Linear in -> out; `base_seed` initializes W and b like PyTorch's default (uniform ±1/sqrt(fan_in)).
  static std::shared_ptr<LoraLayer> linear(std::int64_t in, std::int64_t out, std::int64_t rank, double alpha,
                                           std::uint64_t base_seed);
  // Conv 3x3, padding 1, `stride`, in -> out channels; A is a 3x3 conv to `rank` channels, B a 1x1 conv.
  static std::shared_ptr<LoraLayer> conv(std::int64_t in, std::int64_t out, std::int64_t rank, double alpha,
                                         std::uint64_t base_seed, std::int64_t stride = 2);

  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x);
  // The frozen layer alone, whatever the adapter's state.
  [[nodiscard]] torch::Tensor base_forward(const torch::Tensor& x) const;

  void set_active(bool active) { active_ = active; }
  [[nodiscard]] bool active() const { return active_; }
  // A ~ uniform(±1/sqrt(fan_in)) from `seed`, B = 0: the adapter's delta starts at zero.
  void reset_adapter(std::uint64_t seed);

  [[nodiscard]] Kind kind() const { return kind_; }
  [[nodiscard]] double scale() const { return scale_; }
  torch::Tensor& weight() { return weight_; }
  torch::Tensor& bias() { return bias_; }
  torch::Tensor& lora_a() { return lora_a_; }
  torch::Tensor& lora_b() { return lora_b_; }

 private:
  LoraLayer(Kind kind, torch::Tensor weight, torch::Tensor bias, std::int64_t rank, double alpha, std::int64_t stride = 1);

  Kind kind_;
  std::int64_t stride_ = 1;  // convolutions
  double scale_;
  bool active_ = false;
  torch::Tensor weight_, bias_, lora_a_, lora_b_;
};

}  // namespace lethe::trainer
