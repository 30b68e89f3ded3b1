// The noisy-GD tile kernel (trainer/noisy_gd_kernel.h): its exp, its sums against a long-double
// reference, and the AVX2 kernel against the portable one, bit for bit, over shapes that exercise
// every remainder (rows not a multiple of 4, features not a multiple of 4, classes not a multiple
// of 4 or of 12).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "trainer/noisy_gd_kernel.h"

namespace {

using lethe::trainer::detail::best_tile_kernel;
using lethe::trainer::detail::kernel_exp;
using lethe::trainer::detail::TileKernel;
using lethe::trainer::detail::TileSums;

constexpr double kBound = 1.0 + 1e-12;
constexpr int kBits = 42;

struct Problem {
  std::int64_t rows, d, classes;
  std::vector<double> x, w;
  std::vector<std::int64_t> y;
};

// Rows of unit norm, Gaussian weights of scale `weight_scale` (large: softmax at its extremes).
Problem problem(std::int64_t rows, std::int64_t d, std::int64_t classes, std::uint64_t seed, double weight_scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> gaussian;
  Problem p{rows, d, classes, std::vector<double>(static_cast<std::size_t>(rows * d)),
            std::vector<double>(static_cast<std::size_t>(d * classes)), std::vector<std::int64_t>(static_cast<std::size_t>(rows))};
  for (std::int64_t i = 0; i < rows; ++i) {
    double norm2 = 0;
    for (std::int64_t j = 0; j < d; ++j) norm2 += std::pow(p.x[static_cast<std::size_t>(i * d + j)] = gaussian(rng), 2);
    for (std::int64_t j = 0; j < d; ++j) p.x[static_cast<std::size_t>(i * d + j)] /= std::sqrt(norm2);
    p.y[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(classes));
  }
  for (auto& v : p.w) v = weight_scale * gaussian(rng);
  return p;
}

std::vector<std::int64_t> sums(const Problem& p, double clip, TileKernel kernel, std::int64_t tile_rows = 256) {
  TileSums tiles(p.w.data(), p.d, p.classes, clip, kBits, kBound, kernel);
  for (std::int64_t begin = 0; begin < p.rows; begin += tile_rows) {
    const std::int64_t rows = std::min(tile_rows, p.rows - begin);
    EXPECT_EQ(tiles.add(p.x.data() + begin * p.d, p.y.data() + begin, rows), -1);
  }
  return tiles.sums();
}

// The clipped gradient sum in long double, the textbook way.
std::vector<long double> reference(const Problem& p, double clip) {
  std::vector<long double> g(static_cast<std::size_t>(p.d * p.classes), 0.0L);
  std::vector<long double> r(static_cast<std::size_t>(p.classes));
  for (std::int64_t i = 0; i < p.rows; ++i) {
    const double* x = p.x.data() + i * p.d;
    long double top = -INFINITY, total = 0, r2 = 0, x2 = 0;
    for (std::int64_t k = 0; k < p.classes; ++k) {
      long double z = 0;
      for (std::int64_t j = 0; j < p.d; ++j) z += static_cast<long double>(x[j]) * p.w[static_cast<std::size_t>(j * p.classes + k)];
      top = std::max(top, r[static_cast<std::size_t>(k)] = z);
    }
    for (auto& v : r) total += (v = std::exp(v - top));
    for (std::int64_t k = 0; k < p.classes; ++k) {
      auto& v = r[static_cast<std::size_t>(k)];
      v = v / total - (k == p.y[static_cast<std::size_t>(i)] ? 1 : 0);
      r2 += v * v;
    }
    for (std::int64_t j = 0; j < p.d; ++j) x2 += static_cast<long double>(x[j]) * x[j];
    const long double norm = std::sqrt(x2 * r2);
    const long double scale = norm > clip ? clip / norm : 1.0L;
    for (std::int64_t j = 0; j < p.d; ++j)
      for (std::int64_t k = 0; k < p.classes; ++k)
        g[static_cast<std::size_t>(j * p.classes + k)] += x[j] * r[static_cast<std::size_t>(k)] * scale;
  }
  return g;
}

TEST(NoisyGdKernel, ExpIsWithinAnUlpOrTwoOnTheSoftmaxRange) {
  double worst = 0;
  for (int i = 0; i <= 100000; ++i) {
    const double x = -708.0 * i / 100000.0;
    const double expected = std::exp(x);
    worst = std::max(worst, std::abs(kernel_exp(x) - expected) / (std::nextafter(expected, INFINITY) - expected));
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(kernel_exp(0.0), 1.0);
  EXPECT_EQ(kernel_exp(-0.0), 1.0);
  EXPECT_GT(kernel_exp(-INFINITY), 0.0) << "clamped at exp(-708), a normal double";
  EXPECT_LT(kernel_exp(-INFINITY), 1e-307);
  EXPECT_TRUE(std::isnan(kernel_exp(NAN)));
}

TEST(NoisyGdKernel, SumsMatchALongDoubleReference) {
  for (const double clip : {std::sqrt(2.0), 0.25}) {
    const Problem p = problem(700, 37, 10, 3, 4.0);
    const auto got = sums(p, clip, best_tile_kernel());
    const auto expected = reference(p, clip);
    double worst = 0;
    for (std::size_t k = 0; k < got.size(); ++k)
      worst = std::max(worst, static_cast<double>(std::abs(std::ldexp(static_cast<long double>(got[k]), -kBits) - expected[k])));
    EXPECT_LT(worst / 700, 1e-14) << "clip " << clip;
  }
}

TEST(NoisyGdKernel, Avx2AndPortableKernelsGiveTheSameBits) {
  if (best_tile_kernel() != TileKernel::kAvx2) GTEST_SKIP() << "this CPU has no AVX2 and FMA";
  std::uint64_t seed = 10;
  for (const std::int64_t classes : {2, 3, 4, 5, 10, 12, 13, 17, 26}) {
    for (const std::int64_t d : {1, 3, 4, 7, 33}) {
      for (const double scale : {0.5, 30.0}) {
        const Problem p = problem(263, d, classes, ++seed, scale);
        for (const double clip : {std::sqrt(2.0), 0.3})
          for (const std::int64_t tile_rows : {256, 7})
            EXPECT_EQ(sums(p, clip, TileKernel::kAvx2, tile_rows), sums(p, clip, TileKernel::kPortable, tile_rows))
                << classes << " classes, " << d << " features, weight scale " << scale << ", clip " << clip << ", tiles of "
                << tile_rows;
      }
    }
  }
}

TEST(NoisyGdKernel, RefusesFeaturesOutOfBoundsAndNonFiniteSumsAndLeavesTheSumsAlone) {
  for (const TileKernel kernel : {TileKernel::kPortable, best_tile_kernel()}) {
    Problem p = problem(10, 6, 3, 5, 1.0);
    TileSums tiles(p.w.data(), p.d, p.classes, 1.0, kBits, kBound, kernel);
    p.x[7 * 6 + 5] = 1.5;
    EXPECT_EQ(tiles.add(p.x.data(), p.y.data(), 10), 7);
    p.x[7 * 6 + 5] = 0.0;
    p.x[3 * 6 + 1] = NAN;
    EXPECT_EQ(tiles.add(p.x.data(), p.y.data(), 10), 3);
    EXPECT_TRUE(std::all_of(tiles.sums().begin(), tiles.sums().end(), [](std::int64_t v) { return v == 0; }));
    EXPECT_THROW((void)tiles.add(p.x.data(), p.y.data(), 0), std::invalid_argument);
    EXPECT_THROW((void)tiles.add(p.x.data(), p.y.data(), 257), std::invalid_argument);
    // Weights that diverged to NaN: no tile sum to round.
    p.x[3 * 6 + 1] = 0.0;
    p.w[4] = NAN;
    TileSums diverged(p.w.data(), p.d, p.classes, 1.0, kBits, kBound, kernel);
    EXPECT_EQ(diverged.add(p.x.data(), p.y.data(), 10), -2);
    EXPECT_TRUE(std::all_of(diverged.sums().begin(), diverged.sums().end(), [](std::int64_t v) { return v == 0; }));
  }
}

}  // namespace
