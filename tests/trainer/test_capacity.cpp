// Tests of the deletion-capacity simulation against DESIGN.md §3's m·L·H(m·min(B,L)).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "trainer/capacity.h"

using namespace lethe::trainer;

TEST(CapacityTest, HarmonicNumbersAndFormula) {
  EXPECT_DOUBLE_EQ(harmonic_number(0), 0.0);
  EXPECT_DOUBLE_EQ(harmonic_number(1), 1.0);
  EXPECT_NEAR(harmonic_number(4), 25.0 / 12.0, 1e-12);
  EXPECT_NEAR(expected_capacity_formula(4, 4, 1), 16.0 * 25.0 / 12.0, 1e-9);  // SISA: H(m)
  // B beyond L adds no capacity: min(B, L) first slices per shard.
  EXPECT_DOUBLE_EQ(expected_capacity_formula(3, 4, 8), expected_capacity_formula(3, 4, 4));
}

TEST(CapacityTest, SimulationMatchesTheFormulaWithinTenPercent) {
  const auto start = std::chrono::steady_clock::now();
  // (m, L, B): SISA, B < L, B = L (Latin square) and B > L (suffix rotations).
  const std::vector<std::tuple<int, int, int>> configs = {
      {4, 4, 1}, {8, 3, 1}, {2, 5, 3}, {8, 4, 2}, {4, 4, 4}, {6, 6, 6}, {3, 4, 8}, {4, 3, 6}};
  for (const auto& [m, l, b] : configs) {
    const CapacityResult r = simulate_capacity(m, l, b, SequenceSelection::kCyclic, 1500, 20261123);
    EXPECT_NEAR(r.mean_deletions, r.formula, 0.10 * r.formula) << "m=" << m << " L=" << l << " B=" << b;
    EXPECT_LT(std::abs(r.relative_error()), 0.10);
    EXPECT_GT(r.stddev_deletions, 0.0);
    // The formula counts deletions that land in dead shards too: counting only those that hit a
    // live shard misses it by far more than the tolerance (unless there is a single shard).
    EXPECT_LT(r.mean_live_shard_deletions, 0.85 * r.formula) << "m=" << m << " L=" << l << " B=" << b;
  }
  const CapacityResult bms = simulate_capacity(4, 4, 3, SequenceSelection::kBms, 1500, 7);
  EXPECT_NEAR(bms.mean_deletions, bms.formula, 0.10 * bms.formula);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(CapacityTest, SingleShardSingleSliceDiesAtTheFirstDeletion) {
  const CapacityResult r = simulate_capacity(1, 1, 1, SequenceSelection::kCyclic, 10, 1);
  EXPECT_DOUBLE_EQ(r.mean_deletions, 1.0);
  EXPECT_DOUBLE_EQ(r.stddev_deletions, 0.0);
  EXPECT_DOUBLE_EQ(r.formula, 1.0);
}

TEST(CapacityTest, DeterministicForASeed) {
  const CapacityResult a = simulate_capacity(3, 4, 2, SequenceSelection::kCyclic, 200, 99);
  const CapacityResult b = simulate_capacity(3, 4, 2, SequenceSelection::kCyclic, 200, 99);
  const CapacityResult c = simulate_capacity(3, 4, 2, SequenceSelection::kCyclic, 200, 100);
  EXPECT_EQ(a.mean_deletions, b.mean_deletions);
  EXPECT_EQ(a.mean_live_shard_deletions, b.mean_live_shard_deletions);
  EXPECT_NE(a.mean_deletions, c.mean_deletions);
}

TEST(CapacityTest, RejectsBadArguments) {
  EXPECT_THROW((void)simulate_capacity(0, 4, 1, SequenceSelection::kCyclic, 10, 1), std::invalid_argument);
  EXPECT_THROW((void)simulate_capacity(2, 4, 1, SequenceSelection::kCyclic, 0, 1), std::invalid_argument);
  EXPECT_THROW((void)simulate_capacity(2, 3, 7, SequenceSelection::kCyclic, 10, 1), std::invalid_argument);  // > 3!
  EXPECT_THROW((void)simulate_capacity(2, 3, 4, SequenceSelection::kBms, 10, 1), std::invalid_argument);     // > L
}
