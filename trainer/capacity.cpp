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

CapacityResult simulate_capacity(int shards, int slices, int budget, SequenceSelection selection, int trials,
                                 std::uint64_t seed) {
  require_positive(shards, "shards");
  require_positive(slices, "slices");
  require_positive(budget, "budget");
  require_positive(trials, "trials");
  const std::vector<double> uniform(static_cast<std::size_t>(slices), 1.0 / slices);
  const ShardPlan trained = make_shard_plan(slices, select_sequences(selection, slices, budget, uniform, slices),
                                            slices);

  CapacityResult result;
  result.shards = shards;
  result.slices = slices;
  result.budget = budget;
  result.selection = selection;
  result.trials = trials;
  result.formula = expected_capacity_formula(shards, slices, budget);

  Random random(seed);
  double sum = 0.0, sum_squares = 0.0, live_sum = 0.0;
  for (int trial = 0; trial < trials; ++trial) {
    std::vector<ShardPlan> plans(static_cast<std::size_t>(shards), trained);
    int live = shards;
    std::int64_t deletions = 0, live_deletions = 0;
    while (live > 0) {
      const auto shard = static_cast<std::size_t>(random.below(static_cast<std::uint64_t>(shards)));
      const auto slice = static_cast<int>(random.below(static_cast<std::uint64_t>(slices)));
      ++deletions;
      if (is_dead(plans[shard])) continue;
      ++live_deletions;
      if (!apply_deletion(plans[shard], slice).shard_live_after) --live;
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
