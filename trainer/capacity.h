// trainer/capacity.h — deletion capacity of an S3T job: how many uniform deletions it takes to
// kill every shard, simulated on the real plan bookkeeping and compared with DESIGN.md §3's formula.
#pragma once

#include <cstdint>
#include <span>

#include "trainer/s3t_plan.h"

namespace lethe::trainer {

struct CapacityResult {
  int shards = 0;
  int slices = 0;
  int budget = 0;
  SequenceSelection selection = SequenceSelection::kCyclic;
  int trials = 0;
  // Deletions until every shard is dead, every deletion counted (also those whose record lies in
  // an already-dead shard): the quantity the formula predicts.
  double mean_deletions = 0.0;
  double stddev_deletions = 0.0;  // across trials
  // The same run counting only deletions that hit a still-live shard (always ≤ mean_deletions).
  double mean_live_shard_deletions = 0.0;
  double formula = 0.0;  // expected_capacity_formula(shards, slices, budget)
  // m·L·H(n), n the distinct first slices of sequences still live, summed over shards: the exact
  // expectation for the simulated plans (see capacity.cpp); equal to `formula` for trained cyclic
  // or BMS plans, whose first slices are min(B, L) distinct ones per shard.
  double exact_expectation = 0.0;

  // (mean_deletions − formula) / formula.
  [[nodiscard]] double relative_error() const { return (mean_deletions - formula) / formula; }
  // Half width of the 95% confidence interval of mean_deletions (normal approximation).
  [[nodiscard]] double ci95_half_width() const;
};

// H(n) = 1 + 1/2 + … + 1/n (0 for n = 0).
[[nodiscard]] double harmonic_number(std::int64_t n);

// m·L·H(m·min(B, L)): the expected number of uniform deletions until all m shards are dead.
[[nodiscard]] double expected_capacity_formula(int shards, int slices, int budget);

// Simulates `trials` runs of deletions against `shards` shards of `slices` slices and `budget`
// sequences chosen by `selection` (BMS with uniform probabilities 1/L and horizon L). Each
// deletion removes a uniformly random record, so it hits a uniformly random (shard, slice) as
// records are hashed uniformly; a run ends when every shard is dead. Deterministic for a seed.
// Throws std::invalid_argument for non-positive sizes or trials, or a budget the selection
// cannot give.
[[nodiscard]] CapacityResult simulate_capacity(int shards, int slices, int budget, SequenceSelection selection,
                                               int trials, std::uint64_t seed);

// The same simulation against given plans, one per shard (e.g. a trained job's manifest), each
// starting from its sequences' surviving prefixes as given. All plans must have the same slices
// and number of sequences (that is what the formula's L and B are); `selection` in the result is
// left at its default, since plans do not say how their orders were chosen. Throws
// std::invalid_argument for no plans, an invalid or mismatched plan, or trials < 1.
[[nodiscard]] CapacityResult simulate_capacity(std::span<const ShardPlan> plans, int trials, std::uint64_t seed);

}  // namespace lethe::trainer
