// trainer/ensemble.h — S3T inference: per live shard the served sequence's prefix model, class
// probabilities averaged over live shards (DESIGN.md §3), and the accuracy of such predictions.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "trainer/model.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

struct EnsembleMember {
  int shard = 0;
  int sequence = 0;
  PrefixState state;  // state.prefix = the served depth; 0 means the shard is dead and is skipped
};

// Mean softmax probabilities [N, classes] over members with a positive depth. `model` holds the
// frozen backbone; its adapters and head are overwritten. Throws when no member is live.
// The frozen site inputs are computed once and each member runs only the blocks from its depth up.
[[nodiscard]] torch::Tensor ensemble_probabilities(LetheModel& model, const std::vector<EnsembleMember>& members,
                                                   const torch::Tensor& inputs, std::int64_t batch_size);

// Fraction of rows whose arg-max equals the label.
[[nodiscard]] double accuracy(const torch::Tensor& probabilities, const torch::Tensor& labels);

}  // namespace lethe::trainer
