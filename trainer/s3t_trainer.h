// trainer/s3t_trainer.h — trains one (shard, sequence) S3T job top-down (DESIGN.md §3): step i trains
// site i's adapter and the head on slices π(1..i), reading site inputs from the activation cache.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "trainer/activation_cache.h"
#include "trainer/job_settings.h"
#include "trainer/model.h"

namespace lethe::trainer {


// What a prefix checkpoint P_i holds: adapters of sites 1..prefix and the head after step `prefix`.
// Tensor names: "site<i>.lora_A", "site<i>.lora_B" (i = 1..prefix), "head.weight", "head.bias".
struct PrefixState {
  int prefix = 0;
  NamedTensors tensors;  // on the CPU, contiguous
};

// Copies the model's adapters 1..prefix and head (to the CPU).
[[nodiscard]] PrefixState capture_prefix(LetheModel& model, int prefix);
// Loads a prefix state into `model` and activates sites 1..prefix. Throws std::invalid_argument naming
// the tensor when one is missing or its shape does not match the model.
void apply_prefix(LetheModel& model, const PrefixState& state);

// A well-mixed 64-bit seed for (seed, a, b, c): jobs, steps and epochs each get their own stream.
[[nodiscard]] std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0, std::uint64_t c = 0);

struct SequenceStats {
  std::int64_t samples = 0;  // forward+backward sample passes
  double seconds = 0;
};

class S3TTrainer {
 public:
  // `model` is this trainer's own copy, holding the frozen backbone and the starting (pretrained) head.
  S3TTrainer(LetheModel& model, OptimizerSettings options);

  using PrefixCallback = std::function<void(const PrefixState&)>;

  // Trains the sequence `order` (slice ids; order[0] = π(1)) over records whose slice is
  // `slice_of_record[r]`, labels [N] int64, site inputs from `cache` (same records, same order).
  // Starts after `resume_from` (prefix k: steps k+1..L) or from scratch; calls `on_prefix` with
  // P_i after each step i. Each step depends only on P_{i-1} and (job_seed, i): resuming gives
  // bit-identical results.
  SequenceStats train_sequence(const ActivationCache& cache, const torch::Tensor& labels,
                               const std::vector<int>& slice_of_record, const std::vector<int>& order,
                               std::uint64_t job_seed, const PrefixState* resume_from,
                               const PrefixCallback& on_prefix);

  // The straightforward reference: the same training, but every batch runs the full forward pass
  // from the raw `inputs` ([N, C, H, W]). Same results as train_sequence up to float rounding.
  SequenceStats train_sequence_uncached(const torch::Tensor& inputs, const torch::Tensor& labels,
                                        const std::vector<int>& slice_of_record, const std::vector<int>& order,
                                        std::uint64_t job_seed, const PrefixState* resume_from,
                                        const PrefixCallback& on_prefix);

  // Indices (ascending) of the records in slices order[0..prefix-1].
  [[nodiscard]] static std::vector<std::int64_t> prefix_records(const std::vector<int>& slice_of_record,
                                                                const std::vector<int>& order, int prefix);

 private:
  // `inputs` are site `site`'s cached inputs when `from_site`, raw model inputs otherwise.
  std::int64_t train_step(const torch::Tensor& inputs, bool from_site, const torch::Tensor& labels,
                          const std::vector<std::int64_t>& records, int site, std::uint64_t step_seed);
  SequenceStats run(const ActivationCache* cache, const torch::Tensor* raw_inputs, const torch::Tensor& labels,
                    const std::vector<int>& slice_of_record, const std::vector<int>& order, std::uint64_t job_seed,
                    const PrefixState* resume_from, const PrefixCallback& on_prefix);

  LetheModel& model_;
  OptimizerSettings options_;
};

}  // namespace lethe::trainer
