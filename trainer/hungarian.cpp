// trainer/hungarian.cpp — the Hungarian algorithm with potentials (shortest augmenting paths),
// run as a minimum-cost assignment on negated weights.
#include "trainer/hungarian.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace lethe::trainer {
namespace {

void validate(const std::vector<std::vector<double>>& weights) {
  const std::size_t rows = weights.size();
  const std::size_t cols = rows == 0 ? 0 : weights.front().size();
  if (rows > cols) {
    throw std::invalid_argument("max_weight_assignment: " + std::to_string(rows) + " rows but only " +
                                std::to_string(cols) +
                                " columns; every row needs its own column, so pass n ≤ m (transpose the matrix)");
  }
  for (std::size_t r = 0; r < rows; ++r) {
    if (weights[r].size() != cols) {
      throw std::invalid_argument("max_weight_assignment: row " + std::to_string(r) + " has " +
                                  std::to_string(weights[r].size()) + " columns, row 0 has " +
                                  std::to_string(cols) + "; pass a rectangular matrix");
    }
    for (std::size_t c = 0; c < cols; ++c) {
      const double w = weights[r][c];
      if (std::isnan(w) || w == std::numeric_limits<double>::infinity()) {
        throw std::invalid_argument("max_weight_assignment: weight [" + std::to_string(r) + "][" +
                                    std::to_string(c) +
                                    "] is NaN or +inf; use finite weights, or kForbiddenWeight to exclude a pair");
      }
    }
  }
}

}  // namespace

Assignment max_weight_assignment(const std::vector<std::vector<double>>& weights) {
  validate(weights);
  const int n = static_cast<int>(weights.size());
  const int m = n == 0 ? 0 : static_cast<int>(weights.front().size());
  Assignment result;
  if (n == 0) return result;

  // Forbidden pairs get a finite penalty larger than any difference between two totals of
  // permitted pairs, so a matching that avoids them always wins when one exists; finite
  // costs keep the potentials' arithmetic exact where infinities would produce NaN.
  double lowest = 0.0, highest = 0.0;
  bool any_permitted = false;
  for (const auto& row : weights) {
    for (double w : row) {
      if (w == kForbiddenWeight) continue;
      lowest = any_permitted ? std::min(lowest, w) : w;
      highest = any_permitted ? std::max(highest, w) : w;
      any_permitted = true;
    }
  }
  const double penalty = static_cast<double>(n) * (highest - lowest) + 1.0;
  auto cost = [&](int r, int c) {  // 1-based; minimizing cost maximizes weight
    const double w = weights[r - 1][c - 1];
    return w == kForbiddenWeight ? penalty : highest - w;
  };

  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0.0), v(m + 1, 0.0);
  std::vector<int> row_of_col(m + 1, 0), way(m + 1, 0);  // column 0 is the virtual root
  for (int i = 1; i <= n; ++i) {
    row_of_col[0] = i;
    int j0 = 0;
    std::vector<double> min_slack(m + 1, inf);
    std::vector<char> used(m + 1, 0);
    do {
      used[j0] = 1;
      const int i0 = row_of_col[j0];
      double delta = inf;
      int j1 = 0;
      for (int j = 1; j <= m; ++j) {
        if (used[j]) continue;
        const double slack = cost(i0, j) - u[i0] - v[j];
        if (slack < min_slack[j]) {
          min_slack[j] = slack;
          way[j] = j0;
        }
        if (min_slack[j] < delta) {
          delta = min_slack[j];
          j1 = j;
        }
      }
      for (int j = 0; j <= m; ++j) {
        if (used[j]) {
          u[row_of_col[j]] += delta;
          v[j] -= delta;
        } else {
          min_slack[j] -= delta;
        }
      }
      j0 = j1;
    } while (row_of_col[j0] != 0);
    do {  // flip the augmenting path back to the root
      const int j1 = way[j0];
      row_of_col[j0] = row_of_col[j1];
      j0 = j1;
    } while (j0 != 0);
  }

  result.column_of_row.assign(n, -1);
  for (int j = 1; j <= m; ++j) {
    if (row_of_col[j] != 0) result.column_of_row[row_of_col[j] - 1] = j - 1;
  }
  for (int r = 0; r < n; ++r) {
    const double w = weights[r][result.column_of_row[r]];
    if (w == kForbiddenWeight) {
      throw std::invalid_argument("max_weight_assignment: no matching gives every one of the " +
                                  std::to_string(n) + " rows a permitted column (row " + std::to_string(r) +
                                  " cannot be placed); permit more pairs or drop rows");
    }
    result.total_weight += w;
  }
  return result;
}

}  // namespace lethe::trainer
