// trainer/capacity.cpp — Monte Carlo deletion capacity over ShardPlans.
//
// Finding (checked by tests/trainer/test_capacity.cpp): the formula m·L·H(m·min(B,L)) counts
// every deletion, including those that land in an already-dead shard. A shard dies exactly when
// each of its sequences has lost its first slice, and the first slices of the cyclic (and BMS)
// sequences are min(B, L) distinct slices. So all shards are dead once each of m·min(B,L) marked
// (shard, slice) cells among m·L equally likely cells has been hit: a coupon collector over
// n = m·min(B,L) coupons drawn with probability 1/(m·L) each, whose expectation is exactly
// m·L·H(n). Counting only deletions that hit live shards gives a visibly smaller mean.
#include "trainer/capacity.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lethe::trainer {
namespace {

// splitmix64 with unbiased bounded draws: the same stream on every platform and standard
// library, unlike std::uniform_int_distribution.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  // Uniform in [0, bound), bound ≥ 1, by rejecting the top partial block.
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % bound;
  }

 private:
  std::uint64_t state_;
};

void require_positive(int value, const char* name) {
  if (value < 1) {
    throw std::invalid_argument(std::string("simulate_capacity: ") + name + "=" + std::to_string(value) +
                                " must be at least 1");
  }
}

}  // namespace

double harmonic_number(std::int64_t n) {
  double sum = 0.0;
  for (std::int64_t k = n; k >= 1; --k) sum += 1.0 / static_cast<double>(k);  // small terms first
  return sum;
}

double expected_capacity_formula(int shards, int slices, int budget) {
  const std::int64_t m = shards, l = slices, b = budget;
  return static_cast<double>(m * l) * harmonic_number(m * std::min(b, l));
}

double CapacityResult::ci95_half_width() const {
  return trials > 0 ? 1.959964 * stddev_deletions / std::sqrt(static_cast<double>(trials)) : 0.0;
}

CapacityResult simulate_capacity(int shards, int slices, int budget, SequenceSelection selection, int trials,
                                 std::uint64_t seed) {
  require_positive(shards, "shards");
  require_positive(slices, "slices");
  require_positive(budget, "budget");
  require_positive(trials, "trials");
  const std::vector<double> uniform(static_cast<std::size_t>(slices), 1.0 / slices);
  const ShardPlan trained = make_shard_plan(slices, select_sequences(selection, slices, budget, uniform, slices),
                                            slices);
  const std::vector<ShardPlan> plans(static_cast<std::size_t>(shards), trained);
  CapacityResult result = simulate_capacity(plans, trials, seed);
  result.selection = selection;
  return result;
}

CapacityResult simulate_capacity(std::span<const ShardPlan> plans, int trials, std::uint64_t seed) {
  require_positive(trials, "trials");
  if (plans.empty()) throw std::invalid_argument("simulate_capacity: no shard plans given; a job has at least one shard");
  const int slices = plans[0].slices;
  const auto budget = static_cast<int>(plans[0].sequences.size());
  std::int64_t first_slices = 0;  // the coupons: distinct first slices of live sequences, over shards
  for (std::size_t k = 0; k < plans.size(); ++k) {
    const std::string field = "shards[" + std::to_string(k) + "].plan";
    validate_shard_plan(plans[k], field);
    if (plans[k].slices != slices || static_cast<int>(plans[k].sequences.size()) != budget) {
      throw std::invalid_argument(field + ": " + std::to_string(plans[k].slices) + " slices and " +
                                  std::to_string(plans[k].sequences.size()) + " sequences, but shard 0 has " +
                                  std::to_string(slices) + " and " + std::to_string(budget) +
                                  "; every shard of a job has the same L and B");
    }
    std::vector<char> first(static_cast<std::size_t>(slices), 0);
    // A sequence reaches depth 0 exactly when its first slice is hit; one already at 0 needs nothing.
    for (const auto& sequence : plans[k].sequences) {
      if (sequence.surviving_prefix > 0) first[static_cast<std::size_t>(sequence.order[0])] = 1;
    }
    first_slices += std::count(first.begin(), first.end(), 1);
  }
  const auto shards = static_cast<int>(plans.size());

  CapacityResult result;
  result.shards = shards;
  result.slices = slices;
  result.budget = budget;
  result.trials = trials;
  result.formula = expected_capacity_formula(shards, slices, budget);
  result.exact_expectation = static_cast<double>(static_cast<std::int64_t>(shards) * slices) * harmonic_number(first_slices);

  Random random(seed);
  double sum = 0.0, sum_squares = 0.0, live_sum = 0.0;
  const auto live_at_start = static_cast<int>(std::count_if(plans.begin(), plans.end(), [](const ShardPlan& p) { return !is_dead(p); }));
  for (int trial = 0; trial < trials; ++trial) {
    std::vector<ShardPlan> state(plans.begin(), plans.end());
    int live = live_at_start;
    std::int64_t deletions = 0, live_deletions = 0;
    while (live > 0) {
      const auto shard = static_cast<std::size_t>(random.below(static_cast<std::uint64_t>(shards)));
      const auto slice = static_cast<int>(random.below(static_cast<std::uint64_t>(slices)));
      ++deletions;
      if (is_dead(state[shard])) continue;
      ++live_deletions;
      if (!apply_deletion(state[shard], slice).shard_live_after) --live;
    }
    const auto d = static_cast<double>(deletions);
    sum += d;
    sum_squares += d * d;
    live_sum += static_cast<double>(live_deletions);
  }
  result.mean_deletions = sum / trials;
  result.mean_live_shard_deletions = live_sum / trials;
  result.stddev_deletions =
      trials > 1 ? std::sqrt(std::max(0.0, (sum_squares - sum * sum / trials) / (trials - 1))) : 0.0;
  return result;
}

}  // namespace lethe::trainer
