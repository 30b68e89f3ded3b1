#include "trainer/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace lethe::trainer {

at::Generator make_cpu_generator(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

namespace {

torch::Tensor uniform(at::IntArrayRef shape, double bound, at::Generator& generator) {
  return torch::rand(shape, generator, torch::kFloat32) * (2 * bound) - bound;
}

constexpr std::int64_t kKernel = 3;

}  // namespace

LoraLayer::LoraLayer(Kind kind, torch::Tensor weight, torch::Tensor bias, std::int64_t rank, double alpha,
                     std::int64_t stride)
    : kind_(kind), stride_(stride), scale_(alpha / static_cast<double>(rank)) {
  weight_ = register_parameter("weight", std::move(weight));
  bias_ = register_parameter("bias", std::move(bias));
  const auto out = weight_.size(0);
  const auto in = weight_.size(1);
  if (kind == Kind::kLinear) {
    lora_a_ = register_parameter("lora_A", torch::zeros({rank, in}));
    lora_b_ = register_parameter("lora_B", torch::zeros({out, rank}));
  } else {
    lora_a_ = register_parameter("lora_A", torch::zeros({rank, in, kKernel, kKernel}));
    lora_b_ = register_parameter("lora_B", torch::zeros({out, rank, 1, 1}));
  }
}

std::shared_ptr<LoraLayer> LoraLayer::linear(std::int64_t in, std::int64_t out, std::int64_t rank, double alpha,
                                             std::uint64_t base_seed) {
  auto generator = make_cpu_generator(base_seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  auto weight = uniform({out, in}, bound, generator);
  auto bias = uniform({out}, bound, generator);
  return std::shared_ptr<LoraLayer>(new LoraLayer(Kind::kLinear, weight, bias, rank, alpha));
}

std::shared_ptr<LoraLayer> LoraLayer::conv(std::int64_t in, std::int64_t out, std::int64_t rank, double alpha,
                                           std::uint64_t base_seed, std::int64_t stride) {
  auto generator = make_cpu_generator(base_seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in * kKernel * kKernel));
  auto weight = uniform({out, in, kKernel, kKernel}, bound, generator);
  auto bias = uniform({out}, bound, generator);
  return std::shared_ptr<LoraLayer>(new LoraLayer(Kind::kConv, weight, bias, rank, alpha, stride));
}

torch::Tensor LoraLayer::base_forward(const torch::Tensor& x) const {
  if (kind_ == Kind::kLinear) return torch::linear(x, weight_, bias_);
  // A channels-last weight makes oneDNN compute (and pass on) channels-last activations, faster on
  // CPU (bench/s3t/conv_layout.py). The parameter itself stays contiguous: files and digests read it so.
  return torch::conv2d(x, weight_.contiguous(at::MemoryFormat::ChannelsLast), bias_, stride_, /*padding=*/1);
}

torch::Tensor LoraLayer::forward(const torch::Tensor& x) {
  auto y = base_forward(x);
  if (!active_) return y;
  if (kind_ == Kind::kLinear) return y + torch::linear(torch::linear(x, lora_a_), lora_b_) * scale_;
  return y + torch::conv2d(torch::conv2d(x, lora_a_, {}, stride_, /*padding=*/1), lora_b_) * scale_;
}

void LoraLayer::reset_adapter(std::uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto generator = make_cpu_generator(seed);
  const auto fan_in = lora_a_.numel() / lora_a_.size(0);
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  lora_a_.copy_(uniform(lora_a_.sizes(), bound, generator));
  lora_b_.zero_();
}

}  // namespace lethe::trainer
