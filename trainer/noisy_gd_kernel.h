// trainer/noisy_gd_kernel.h — the noisy-GD gradient of one tile of records, summed exactly: logits
// X_t W, softmax, residual p - e_y, the per-example clip, X_t^T R_t, rounded to fixed point and
// added to int64 sums (DESIGN.md §4; NoisyGdModel::full_gradient() is its user).
//
// Every float operation is spelled out (fused multiply-adds in a fixed order, a polynomial exp, a
// fixed order of horizontal sums), so a tile's result is a function of its rows and the weights
// alone, and the same bits on every machine: the AVX2 kernel and the portable one (std::fma)
// perform the same IEEE operations in the same order.
#pragma once

#include <cstdint>
#include <vector>

namespace lethe::trainer::detail {

enum class TileKernel { kPortable, kAvx2 };

// The fastest kernel this CPU runs (AVX2 and FMA: kAvx2).
[[nodiscard]] TileKernel best_tile_kernel();
[[nodiscard]] const char* to_string(TileKernel kernel);

// The most rows in one tile: the fixed-point bound below relies on it.
inline constexpr std::int64_t kMaxTileRows = 256;

// exp(x) as the kernels compute it, for x <= 0 (the softmax's range): a degree-13 polynomial after
// the usual range reduction, within 2 ulp; below -708 it returns exp(-708) (about 3e-308) instead
// of underflowing; NaN stays NaN.
[[nodiscard]] double kernel_exp(double x);

// The int64 sums (num_features x num_classes, row-major) of round(2^bits X_t^T R_t) over tiles.
class TileSums {
 public:
  // weights: (num_features x num_classes) row-major float64; features must lie in
  // [-feature_bound, feature_bound] (checked per row).
  TileSums(const double* weights, std::int64_t num_features, std::int64_t num_classes, double clip, int bits,
           double feature_bound, TileKernel kernel);

  // Adds the tile of `rows` (1..kMaxTileRows) records at x (rows x num_features, row-major) with
  // labels y (in [0, num_classes)). Returns -1, or the first row (in the tile) with a feature out
  // of bounds (the sums are then unchanged), or -2 when a tile sum is out of the fixed-point range
  // (not finite: the weights diverged).
  [[nodiscard]] std::int64_t add(const double* x, const std::int64_t* y, std::int64_t rows);

  [[nodiscard]] std::vector<std::int64_t>& sums() { return sums_; }

 private:
  std::int64_t d_;
  std::int64_t classes_;
  std::int64_t padded_;  // classes rounded up to a multiple of 4 (lanes of a vector)
  double clip_;
  double unit_;          // 2^bits
  double bound_;
  TileKernel kernel_;
  std::vector<double> weights_;    // d x padded, the pad columns 0
  std::vector<double> residuals_;  // (kMaxTileRows + 4) x padded: logits, then the clipped residuals
  std::vector<double> scratch_;    // squared norms; before them (AVX2) 4 rows' residuals class-major
  std::vector<double> partial_;    // d x padded: X_t^T R_t
  std::vector<std::int64_t> sums_; // d x classes
};

}  // namespace lethe::trainer::detail
