#include "trainer/ensemble.h"

#include <stdexcept>

#include "trainer/activation_cache.h"

namespace lethe::trainer {

torch::Tensor ensemble_probabilities(LetheModel& model, const std::vector<EnsembleMember>& members,
                                     const torch::Tensor& inputs, std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const auto cache = ActivationCache::build(model, inputs, batch_size);
  torch::Tensor sum;
  int live = 0;
  for (const auto& member : members) {
    if (member.state.prefix <= 0) continue;
    apply_prefix(model, member.state);
    const auto& site_input = cache.site_input(member.state.prefix);
    std::vector<torch::Tensor> parts;
    for (std::int64_t start = 0; start < cache.size(); start += batch_size) {
      const auto end = std::min(cache.size(), start + batch_size);
      parts.push_back(torch::softmax(model.forward_from_site(member.state.prefix, site_input.slice(0, start, end)), 1));
    }
    auto probabilities = parts.empty() ? torch::zeros({0, model.config().num_classes}) : torch::cat(parts, 0).to(torch::kCPU);
    sum = live == 0 ? probabilities : sum + probabilities;
    ++live;
  }
  if (live == 0) throw std::runtime_error("the ensemble has no live shard: every shard's sequences are fully deleted; retrain");
  return sum / static_cast<double>(live);
}

double accuracy(const torch::Tensor& probabilities, const torch::Tensor& labels) {
  if (probabilities.size(0) != labels.size(0)) throw std::invalid_argument("accuracy: predictions and labels differ in count");
  if (labels.size(0) == 0) return 0.0;
  const auto correct = probabilities.argmax(1).to(torch::kCPU).eq(labels.to(torch::kCPU).to(torch::kInt64)).sum().item<std::int64_t>();
  return static_cast<double>(correct) / static_cast<double>(labels.size(0));
}

}  // namespace lethe::trainer
