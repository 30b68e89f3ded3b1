// trainer/activation_cache.h — the frozen backbone's activations at the input of every adapter site,
// computed once per record: with sites below i inactive, step i only runs the blocks from site i up.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "trainer/model.h"

namespace lethe::trainer {

class ActivationCache {
 public:
  // One pass without gradients and with every adapter inactive over `inputs` ([N, C, H, W]),
  // in batches of `batch_size`, on the model's device. The model's active depth is restored.
  [[nodiscard]] static ActivationCache build(LetheModel& model, const torch::Tensor& inputs, std::int64_t batch_size);

  // [N, ...]: what site `site` (1 = top) receives when every site at or below it is inactive.
  [[nodiscard]] const torch::Tensor& site_input(int site) const;
  [[nodiscard]] std::int64_t size() const { return records_; }
  [[nodiscard]] int num_sites() const { return static_cast<int>(site_inputs_.size()); }
  [[nodiscard]] std::int64_t bytes() const;

 private:
  std::vector<torch::Tensor> site_inputs_;  // element site-1
  std::int64_t records_ = 0;
};

}  // namespace lethe::trainer
