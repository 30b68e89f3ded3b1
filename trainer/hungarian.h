// trainer/hungarian.h — maximum-weight bipartite matching (the Hungarian algorithm, O(n²m)),
// used by BMS sequence selection (DESIGN.md §3) to give each sequence one slice per position.
#pragma once

#include <limits>
#include <vector>

namespace lethe::trainer {

// A weight marking a (row, column) pair that may not be matched.
inline constexpr double kForbiddenWeight = -std::numeric_limits<double>::infinity();

// The result of a matching: row r is matched to column column_of_row[r]; columns are distinct.
struct Assignment {
  std::vector<int> column_of_row;
  double total_weight = 0.0;  // sum of weights[r][column_of_row[r]]
};

// Matches every row of an n×m weight matrix (n ≤ m, rows of equal length) to a distinct column,
// maximizing the total weight. Weights may be negative; kForbiddenWeight excludes a pair.
// Deterministic: equal inputs give equal matchings. Throws std::invalid_argument for a ragged
// matrix, n > m, NaN or +inf, or when no matching avoids the forbidden pairs.
[[nodiscard]] Assignment max_weight_assignment(const std::vector<std::vector<double>>& weights);

}  // namespace lethe::trainer
