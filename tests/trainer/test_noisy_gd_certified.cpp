// Empirical checks of the deletion certificate over many seeds: after K_U noisy steps the
// parameters are distributed like a retrain without the deleted records, and a loss-threshold
// membership-inference attack cannot tell deleted records from never-seen ones.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "comm/in_process.h"
#include "tests/trainer/test_noisy_gd_fixtures.h"
#include "trainer/noisy_gd.h"

using namespace lethe::trainer;
using namespace lethe::trainer::testing;

namespace {

constexpr int kSeeds = 300;

struct Sample {
  double mean = 0.0;
  double variance = 0.0;
};

Sample describe(const std::vector<double>& values) {
  Sample s;
  for (double v : values) s.mean += v;
  s.mean /= static_cast<double>(values.size());
  for (double v : values) s.variance += (v - s.mean) * (v - s.mean);
  s.variance /= static_cast<double>(values.size() - 1);
  return s;
}

// Standardized mean difference |mean_a - mean_b| / pooled sd.
double effect_size(const std::vector<double>& a, const std::vector<double>& b) {
  const Sample sa = describe(a);
  const Sample sb = describe(b);
  return std::abs(sa.mean - sb.mean) / std::sqrt(0.5 * (sa.variance + sb.variance));
}

// P(score of a negative > score of a positive) + ties / 2: the AUC of "low loss means member".
double auc_low_is_positive(const std::vector<double>& positives, const std::vector<double>& negatives) {
  std::vector<double> sorted = negatives;
  std::sort(sorted.begin(), sorted.end());
  double wins = 0.0;
  for (double p : positives) {
    const auto upper = std::upper_bound(sorted.begin(), sorted.end(), p);
    const auto lower = std::lower_bound(sorted.begin(), sorted.end(), p);
    wins += static_cast<double>(sorted.end() - upper) + 0.5 * static_cast<double>(upper - lower);
  }
  return wins / (static_cast<double>(positives.size()) * static_cast<double>(negatives.size()));
}

// A fixed problem whose deleted records matter: 54 ordinary records and 6 mislabeled outliers
// (class 1 points labeled 0), the ones deleted.
struct Problem {
  LocalData full;
  LocalData remaining;
};

Problem influential_deletion() {
  const LocalData ordinary = synthetic_data(54, 1001);
  LocalData outliers = synthetic_data(40, 1002);
  std::vector<std::int64_t> class_one;
  for (std::int64_t i = 0; i < 40 && class_one.size() < 6; ++i)
    if (outliers.labels[i].item<std::int64_t>() == 1) class_one.push_back(i);
  outliers = select(outliers, class_one);
  outliers.labels = torch::zeros({6}, torch::kInt64);
  return {{torch::cat({ordinary.features, outliers.features}), torch::cat({ordinary.labels, outliers.labels})},
          ordinary};
}

}  // namespace

// Test: for 300 seeds, A = train K=100 steps on all 60 records, delete the 6 outliers, run K_U
// steps; B (300 other seeds) = K + K_U steps on the 54 remaining records from theta = 0.
// Statistic: the effect size |mean_A - mean_B| / pooled sd of the projection on u, the unit
// direction from the (nearly noiseless) retrained optimum to the full-data optimum, and of each
// coordinate. For Gaussians, Renyi divergence alpha * A bounds the effect size by sqrt(2 A), so
// the threshold is sqrt(2 A(K_U)) plus 4 standard errors of the estimate (4 sqrt(2/300)).
// The same test on the models before their K_U steps (deletion skipped) must fail.
TEST(NoisyGdCertificate, ParametersIndistinguishableFromRetraining) {
  const Problem problem = influential_deletion();
  auto comm = std::move(lethe::comm::make_in_process_world(1).front());

  at::Tensor direction;
  {
    NoisyGdConfig quiet = small_config(0);
    quiet.settings.params.sigma = 1e-9;
    quiet.settings.train_steps = 400;
    NoisyGdModel with(quiet, *comm);
    NoisyGdModel without(quiet, *comm);
    with.train(problem.full);
    without.train(problem.remaining);
    direction = with.weights() - without.weights();
    direction = direction / direction.norm();
  }

  const std::int64_t cells = kFeatures * kClasses;
  std::vector<std::vector<double>> after(static_cast<std::size_t>(cells + 1));
  std::vector<std::vector<double>> skipped(after.size());
  std::vector<std::vector<double>> retrained(after.size());
  const auto record = [&](std::vector<std::vector<double>>& into, const at::Tensor& weights) {
    into[0].push_back((weights * direction).sum().item<double>());
    const at::Tensor flat = weights.flatten();
    for (std::int64_t i = 0; i < cells; ++i) into[static_cast<std::size_t>(i + 1)].push_back(flat[i].item<double>());
  };

  std::int64_t unlearning_steps = 0;
  double bound = 0.0;
  for (int seed = 0; seed < kSeeds; ++seed) {
    NoisyGdModel model(small_config(static_cast<std::uint64_t>(seed)), *comm);
    model.train(problem.full);
    record(skipped, model.weights());
    const DeletionReceipt receipt = model.delete_records(problem.remaining);
    record(after, model.weights());
    unlearning_steps = receipt.unlearning_steps;
    bound = std::sqrt(2.0 * unlearning_rdp_slope(small_config(0).settings.params, receipt.z, receipt.unlearning_steps));

    NoisyGdModel reference(small_config(static_cast<std::uint64_t>(kSeeds + seed)), *comm);
    reference.train(problem.remaining);
    reference.continue_training(problem.remaining, unlearning_steps);
    record(retrained, reference.weights());
  }
  ASSERT_GT(unlearning_steps, 0);
  const double threshold = bound + 4.0 * std::sqrt(2.0 / kSeeds);

  const double projected = effect_size(after[0], retrained[0]);
  const double projected_skipped = effect_size(skipped[0], retrained[0]);
  double worst_coordinate = 0.0;
  double worst_coordinate_skipped = 0.0;
  for (std::size_t i = 1; i < after.size(); ++i) {
    worst_coordinate = std::max(worst_coordinate, effect_size(after[i], retrained[i]));
    worst_coordinate_skipped = std::max(worst_coordinate_skipped, effect_size(skipped[i], retrained[i]));
  }
  const double variance_ratio = describe(after[0]).variance / describe(retrained[0]).variance;
  std::printf("K_U=%lld threshold=%.3f (bound %.3f) projection effect: after=%.3f skipped=%.3f; "
              "worst coordinate: after=%.3f skipped=%.3f; variance ratio %.3f\n",
              static_cast<long long>(unlearning_steps), threshold, bound, projected, projected_skipped,
              worst_coordinate, worst_coordinate_skipped, variance_ratio);
  EXPECT_LT(projected, threshold);
  EXPECT_LT(worst_coordinate, threshold);
  EXPECT_GT(variance_ratio, 2.0 / 3.0);
  EXPECT_LT(variance_ratio, 1.5);
  // The test has power: without the K_U steps the deleted records are plainly visible.
  EXPECT_GT(projected_skipped, threshold);
  EXPECT_GT(worst_coordinate_skipped, threshold);
}

// Test: for 300 seeds, draw 66 records with 30% label noise, train on the first 60, delete the
// first 6 (K_U steps), and score the 6 deleted and the 6 never-seen records by their loss.
// The pooled AUC of "low loss means member" (1800 vs 1800 scores, standard error ~0.01) must
// lie in 0.5 +- 0.05.
TEST(NoisyGdCertificate, MembershipInferenceOnDeletedRecordsIsChance) {
  auto comm = std::move(lethe::comm::make_in_process_world(1).front());
  std::vector<double> deleted_losses;
  std::vector<double> deleted_losses_before;
  std::vector<double> unseen_losses;
  std::vector<double> unseen_losses_before;
  for (int seed = 0; seed < kSeeds; ++seed) {
    const LocalData all = synthetic_data(66, 5000 + static_cast<std::uint64_t>(seed), 0.3);
    const LocalData train = rows_of(all, 0, 60);
    const LocalData deleted = rows_of(all, 0, 6);
    const LocalData unseen = rows_of(all, 60, 66);
    NoisyGdModel model(small_config(static_cast<std::uint64_t>(seed)), *comm);
    model.train(train);
    const at::Tensor before_deleted = model.example_losses(deleted.features, deleted.labels);
    const at::Tensor before_unseen = model.example_losses(unseen.features, unseen.labels);
    (void)model.delete_records(rows_of(all, 6, 60));
    const at::Tensor after_deleted = model.example_losses(deleted.features, deleted.labels);
    const at::Tensor after_unseen = model.example_losses(unseen.features, unseen.labels);
    for (std::int64_t i = 0; i < 6; ++i) {
      deleted_losses.push_back(after_deleted[i].item<double>());
      unseen_losses.push_back(after_unseen[i].item<double>());
      deleted_losses_before.push_back(before_deleted[i].item<double>());
      unseen_losses_before.push_back(before_unseen[i].item<double>());
    }
  }
  const double auc = auc_low_is_positive(deleted_losses, unseen_losses);
  const double auc_before = auc_low_is_positive(deleted_losses_before, unseen_losses_before);
  std::printf("membership AUC after deletion %.4f, before deletion (members) %.4f\n", auc, auc_before);
  EXPECT_NEAR(auc, 0.5, 0.05);
}
