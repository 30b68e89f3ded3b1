// tests/trainer/test_noisy_gd_fixtures.h — small synthetic softmax-regression problems for the
// noisy-GD tests: Gaussian classes in 3-d, normalized with phi, split across ranks.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <vector>

#include "trainer/noisy_gd.h"

namespace lethe::trainer::testing {

inline constexpr std::int64_t kRawFeatures = 3;
inline constexpr std::int64_t kFeatures = kRawFeatures + 1;  // + bias input
inline constexpr std::int64_t kClasses = 3;

// `rows` records: class y ~ uniform, x ~ N(1.5 e_y, I); with probability `label_noise` the label
// is replaced by a uniform one. Features normalized with phi.
inline LocalData synthetic_data(std::int64_t rows, std::uint64_t seed, double label_noise = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> gaussian(0.0, 1.0);
  std::uniform_int_distribution<std::int64_t> label(0, kClasses - 1);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::vector<double> x(static_cast<std::size_t>(rows * kRawFeatures));
  std::vector<std::int64_t> y(static_cast<std::size_t>(rows));
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t c = label(rng);
    for (std::int64_t j = 0; j < kRawFeatures; ++j)
      x[static_cast<std::size_t>(i * kRawFeatures + j)] = gaussian(rng) + (j == c ? 1.5 : 0.0);
    y[static_cast<std::size_t>(i)] = coin(rng) < label_noise ? label(rng) : c;
  }
  return {normalize_features(torch::tensor(x, torch::kFloat64).reshape({rows, kRawFeatures})),
          torch::tensor(y, torch::kInt64)};
}

// Rows [begin, end) of `data`.
inline LocalData rows_of(const LocalData& data, std::int64_t begin, std::int64_t end) {
  return {data.features.slice(0, begin, end).contiguous(), data.labels.slice(0, begin, end).contiguous()};
}

// Records whose index is in `keep`.
inline LocalData select(const LocalData& data, const std::vector<std::int64_t>& keep) {
  const at::Tensor index = torch::tensor(keep, torch::kInt64);
  return {data.features.index_select(0, index).contiguous(), data.labels.index_select(0, index).contiguous()};
}

// Rank `rank` of `world`'s contiguous share of `data` (uneven when rows % world != 0).
inline LocalData share_of(const LocalData& data, int rank, int world) {
  const std::int64_t rows = data.labels.size(0);
  return rows_of(data, rows * rank / world, rows * (rank + 1) / world);
}

inline NoisyGdConfig small_config(std::uint64_t seed) {
  NoisyGdConfig config;
  config.settings.params.lambda = 0.1;
  config.settings.params.eta = 1.0;
  config.settings.params.sigma = 0.1;
  config.num_features = kFeatures;
  config.num_classes = kClasses;
  config.settings.train_steps = 100;
  config.settings.target_epsilon = 1.0;
  config.seed = seed;
  return config;
}

}  // namespace lethe::trainer::testing
