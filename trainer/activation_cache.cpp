#include "trainer/activation_cache.h"

#include <stdexcept>

namespace lethe::trainer {

ActivationCache ActivationCache::build(LetheModel& model, const torch::Tensor& inputs, std::int64_t batch_size) {
  if (batch_size < 1) throw std::invalid_argument("activation cache: batch size must be positive");
  torch::NoGradGuard no_grad;
  const int depth = model.active_depth();
  model.set_active_depth(0);
  const auto device = model.head_weight().device();
  ActivationCache cache;
  cache.records_ = inputs.size(0);
  std::vector<std::vector<torch::Tensor>> parts(static_cast<std::size_t>(model.num_sites()));
  for (std::int64_t start = 0; start < cache.records_; start += batch_size) {
    const auto end = std::min(cache.records_, start + batch_size);
    auto site_inputs = model.site_inputs(inputs.slice(0, start, end).to(device));
    for (std::size_t s = 0; s < parts.size(); ++s) parts[s].push_back(site_inputs[s]);
  }
  model.set_active_depth(depth);
  for (int s = 1; s <= model.num_sites(); ++s) {
    auto& p = parts[static_cast<std::size_t>(s - 1)];
    if (p.empty()) {
      // No records: an empty tensor with the site's per-record shape, from a one-record probe.
      auto probe = model.site_inputs(torch::zeros({1, model.config().input_channels, model.config().input_height,
                                                   model.config().input_width}, device));
      cache.site_inputs_.push_back(probe[static_cast<std::size_t>(s - 1)].slice(0, 0, 0));
    } else {
      cache.site_inputs_.push_back(torch::cat(p, 0));
    }
  }
  return cache;
}

const torch::Tensor& ActivationCache::site_input(int site) const {
  if (site < 1 || site > num_sites()) {
    throw std::out_of_range("activation cache has sites 1.." + std::to_string(num_sites()) + ", not " +
                            std::to_string(site));
  }
  return site_inputs_[static_cast<std::size_t>(site - 1)];
}

std::int64_t ActivationCache::bytes() const {
  std::int64_t total = 0;
  for (const auto& t : site_inputs_) total += t.numel() * static_cast<std::int64_t>(t.element_size());
  return total;
}

}  // namespace lethe::trainer
