// Tests of the maximum-weight assignment against brute force, and of its error reporting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "trainer/hungarian.h"

using namespace lethe::trainer;

namespace {

using Matrix = std::vector<std::vector<double>>;

// Best total over every injective row→column map avoiding forbidden pairs; nullopt if none.
std::optional<double> brute_force_best(const Matrix& w) {
  const int n = static_cast<int>(w.size());
  const int m = static_cast<int>(w.front().size());
  std::vector<int> columns(m);
  std::iota(columns.begin(), columns.end(), 0);
  std::optional<double> best;
  do {  // every permutation of the columns; its first n entries give an injective map
    double total = 0.0;
    bool permitted = true;
    for (int r = 0; r < n && permitted; ++r) {
      const double x = w[r][columns[r]];
      if (x == kForbiddenWeight) permitted = false;
      total += x;
    }
    if (permitted && (!best || total > *best)) best = total;
  } while (std::next_permutation(columns.begin(), columns.end()));
  return best;
}

void expect_valid(const Matrix& w, const Assignment& a) {
  ASSERT_EQ(a.column_of_row.size(), w.size());
  std::set<int> distinct(a.column_of_row.begin(), a.column_of_row.end());
  EXPECT_EQ(distinct.size(), w.size()) << "two rows share a column";
  double total = 0.0;
  for (std::size_t r = 0; r < w.size(); ++r) {
    const int c = a.column_of_row[r];
    ASSERT_GE(c, 0);
    ASSERT_LT(c, static_cast<int>(w[r].size()));
    EXPECT_NE(w[r][c], kForbiddenWeight);
    total += w[r][c];
  }
  EXPECT_DOUBLE_EQ(a.total_weight, total);
}

}  // namespace

TEST(HungarianTest, KnownSquareExample) {
  // Maximum: row0→col1 (7), row1→col0 (6), row2→col2 (9) = 22.
  const Matrix w = {{1, 7, 3}, {6, 5, 4}, {2, 8, 9}};
  const Assignment a = max_weight_assignment(w);
  EXPECT_EQ(a.column_of_row, (std::vector<int>{1, 0, 2}));
  EXPECT_DOUBLE_EQ(a.total_weight, 22.0);
}

TEST(HungarianTest, AgreesWithBruteForceOnSmallIntegerMatricesWithTiesAndNegatives) {
  int checked = 0;
  for (unsigned seed = 0; seed < 400; ++seed) {
    std::mt19937 rng(seed);
    const int n = 1 + static_cast<int>(rng() % 5);
    const int m = n + static_cast<int>(rng() % 3);
    Matrix w(n, std::vector<double>(m));
    for (auto& row : w) {
      for (double& x : row) x = static_cast<double>(static_cast<int>(rng() % 7) - 3);  // -3..3: many ties
    }
    const std::optional<double> best = brute_force_best(w);
    ASSERT_TRUE(best.has_value());
    const Assignment a = max_weight_assignment(w);
    expect_valid(w, a);
    EXPECT_DOUBLE_EQ(a.total_weight, *best) << "seed " << seed << " n=" << n << " m=" << m;
    ++checked;
  }
  EXPECT_EQ(checked, 400);
}

TEST(HungarianTest, AgreesWithBruteForceOnRealMatricesWithForbiddenPairs) {
  int feasible = 0, infeasible = 0;
  for (unsigned seed = 0; seed < 400; ++seed) {
    std::mt19937 rng(1000 + seed);
    std::uniform_real_distribution<double> value(-5.0, 5.0);
    const int n = 1 + static_cast<int>(rng() % 5);
    const int m = n + static_cast<int>(rng() % 2);
    Matrix w(n, std::vector<double>(m));
    for (auto& row : w) {
      for (double& x : row) x = rng() % 3 == 0 ? kForbiddenWeight : value(rng);
    }
    const std::optional<double> best = brute_force_best(w);
    if (!best) {
      EXPECT_THROW((void)max_weight_assignment(w), std::invalid_argument) << "seed " << seed;
      ++infeasible;
      continue;
    }
    const Assignment a = max_weight_assignment(w);
    expect_valid(w, a);
    EXPECT_NEAR(a.total_weight, *best, 1e-9) << "seed " << seed;
    ++feasible;
  }
  // Both branches must have been exercised for the test to mean anything.
  EXPECT_GT(feasible, 100);
  EXPECT_GT(infeasible, 10);
}

TEST(HungarianTest, AllEqualWeightsGiveAValidMatchingDeterministically) {
  const Matrix w(4, std::vector<double>(6, 0.25));
  const Assignment first = max_weight_assignment(w);
  expect_valid(w, first);
  EXPECT_DOUBLE_EQ(first.total_weight, 1.0);
  EXPECT_EQ(max_weight_assignment(w).column_of_row, first.column_of_row);
}

TEST(HungarianTest, EmptyMatrixGivesEmptyAssignment) {
  const Assignment a = max_weight_assignment({});
  EXPECT_TRUE(a.column_of_row.empty());
  EXPECT_EQ(a.total_weight, 0.0);
}

TEST(HungarianTest, RejectsMalformedInput) {
  EXPECT_THROW((void)max_weight_assignment({{1, 2}, {3, 4}, {5, 6}}), std::invalid_argument);  // n > m
  EXPECT_THROW((void)max_weight_assignment({{1, 2, 3}, {4, 5}}), std::invalid_argument);       // ragged
  EXPECT_THROW((void)max_weight_assignment({{1, std::nan("")}}), std::invalid_argument);
  EXPECT_THROW((void)max_weight_assignment({{1, std::numeric_limits<double>::infinity()}}), std::invalid_argument);
  try {
    (void)max_weight_assignment({{kForbiddenWeight, 1}, {kForbiddenWeight, 2}});
    FAIL() << "two rows that can only use column 1 cannot both be matched";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("permitted column"), std::string::npos) << e.what();
  }
}
