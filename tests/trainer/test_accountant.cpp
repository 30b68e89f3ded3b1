// Tests of the noisy-GD accountant (DESIGN.md §4) against values computed by hand from the
// formulas (explicit sums, python3 double precision), plus monotonicity and refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "trainer/accountant.h"

using namespace lethe::trainer;

namespace {

NoisyGdParams params(double lambda, double eta, double sigma) {
  NoisyGdParams p;
  p.lambda = lambda;
  p.eta = eta;
  p.sigma = sigma;
  return p;
}

// One training phase of `steps` on n records, then `deleted` of them deleted.
Accountant after_deletion(const NoisyGdParams& p, std::int64_t n, std::int64_t steps, std::int64_t deleted) {
  Accountant accountant(p, n);
  accountant.record_training(steps);
  accountant.record_deletion(deleted);
  return accountant;
}

// Checks that `fn` throws AccountantError whose message mentions `needle`.
template <typename Fn>
void expect_refusal(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected AccountantError mentioning '" << needle << "'";
  } catch (const AccountantError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

// n=1000, lambda=0.01, eta=1, sigma=0.05, K=100 steps, D=10 deleted, target eps=1, delta=1/1000:
// c=0.99, s^2=0.005, z=(2*10*sqrt2/1000/0.01)(1-0.99^100)=1.7931313221546346, K_U=262
// (eps(261)=1.0014215 > 1), eps=0.9910179430308623, alpha=15.423975392963527,
// DP of the remaining 990 records over 362 steps: eps=2.2176369366360094, alpha=7.6950883321733885.
TEST(AccountantByHand, SlowContraction) {
  const NoisyGdParams p = params(0.01, 1.0, 0.05);
  const Accountant accountant = after_deletion(p, 1000, 100, 10);
  EXPECT_DOUBLE_EQ(contraction(p), 0.99);
  EXPECT_NEAR(step_noise_variance(p), 0.005, 1e-15);
  EXPECT_NEAR(accountant.distance_bound(), 1.7931313221546346, 1e-12);
  const DeletionPlan plan = accountant.plan_deletion(1.0);
  EXPECT_EQ(plan.steps, 262);
  EXPECT_NEAR(plan.unlearning.epsilon, 0.9910179430308623, 1e-10);
  EXPECT_NEAR(plan.unlearning.alpha, 15.423975392963527, 1e-8);
  EXPECT_DOUBLE_EQ(plan.unlearning.delta, 1e-3);
  EXPECT_NEAR(rdp_to_dp(unlearning_rdp_slope(p, plan.z, 261), 1e-3).epsilon, 1.0014215293842543, 1e-10);
  EXPECT_NEAR(plan.remaining_dp.epsilon, 2.2176369366360094, 1e-10);
  EXPECT_NEAR(plan.remaining_dp.alpha, 7.6950883321733885, 1e-8);
  EXPECT_TRUE(plan.certified);
}

// n=1000, lambda=0.1, eta=1, sigma=0.1, K=200, D=10, target 0.5: c=0.9, z=0.28284271227507124,
// K_U=19 (eps(18)=0.5006881573961882), eps=0.44883397163231736, alpha=32.27302491841819,
// Renyi slope A=0.007063129380736696; DP over 219 steps: eps=0.33118398772806024.
TEST(AccountantByHand, FastContraction) {
  const NoisyGdParams p = params(0.1, 1.0, 0.1);
  const Accountant accountant = after_deletion(p, 1000, 200, 10);
  const DeletionPlan plan = accountant.plan_deletion(0.5);
  EXPECT_NEAR(plan.z, 0.28284271227507124, 1e-13);
  EXPECT_EQ(plan.steps, 19);
  EXPECT_NEAR(unlearning_rdp_slope(p, plan.z, 19), 0.007063129380736696, 1e-14);
  EXPECT_NEAR(plan.unlearning.epsilon, 0.44883397163231736, 1e-11);
  EXPECT_NEAR(plan.unlearning.alpha, 32.27302491841819, 1e-8);
  EXPECT_NEAR(rdp_to_dp(unlearning_rdp_slope(p, plan.z, 18), 1e-3).epsilon, 0.5006881573961882, 1e-11);
  EXPECT_NEAR(plan.remaining_dp.epsilon, 0.33118398772806024, 1e-11);
}

// Limit c -> 0: lambda=999.5, eta=1/1000 (= 1/(beta+lambda)), c=0.0005, sigma=0.5, n=200, K=5,
// D=20: z=0.00028298420457690746, one step suffices: K_U=1, eps=2.0598310551614482e-05,
// A = z^2 c^2 / (2 s^2) = 2.0020015010001843e-11; DP over 6 steps: eps=0.0022889458224857077.
TEST(AccountantByHand, LimitOfNoMemoryOneStep) {
  const NoisyGdParams p = params(999.5, 1.0 / 1000.0, 0.5);
  const Accountant accountant = after_deletion(p, 200, 5, 20);
  const DeletionPlan plan = accountant.plan_deletion(1.0);
  EXPECT_NEAR(plan.z, 0.00028298420457690746, 1e-16);
  EXPECT_EQ(plan.steps, 1);
  EXPECT_NEAR(unlearning_rdp_slope(p, plan.z, 1), 2.0020015010001843e-11, 1e-20);
  EXPECT_NEAR(plan.unlearning.epsilon, 2.0598310551614482e-05, 1e-12);
  EXPECT_NEAR(plan.unlearning.alpha, 514443.434766126, 1e-3);
  EXPECT_NEAR(plan.remaining_dp.epsilon, 0.0022889458224857077, 1e-12);
}

// D = 0: nothing to forget, z = 0, K_U = 0, epsilon 0 approached as alpha -> infinity.
// DP of the 1000 records over 100 steps (lambda=0.01, eta=1, sigma=0.05): 1.5026891178979618.
TEST(AccountantByHand, NothingDeletedNeedsNoSteps) {
  const NoisyGdParams p = params(0.01, 1.0, 0.05);
  const Accountant accountant = after_deletion(p, 1000, 100, 0);
  const DeletionPlan plan = accountant.plan_deletion(0.1);
  EXPECT_EQ(plan.z, 0.0);
  EXPECT_EQ(plan.steps, 0);
  EXPECT_EQ(plan.unlearning.epsilon, 0.0);
  EXPECT_TRUE(std::isinf(plan.unlearning.alpha));
  EXPECT_NEAR(plan.remaining_dp.epsilon, 1.5026891178979618, 1e-11);
  EXPECT_NEAR(plan.remaining_dp.alpha, 10.66927426781561, 1e-8);
}

// Two deletions (lambda=0.1, eta=1, sigma=0.2, n=100, delta=1/100, target 1): train 50 steps,
// delete 5: z=1.4069250235774806, K_U=19; run them, delete 3 more: history
// (100, 50, 8), (95, 19, 3), z=1.0766186580111112, K_U=16.
TEST(AccountantByHand, SecondDeletionUsesWholeHistory) {
  const NoisyGdParams p = params(0.1, 1.0, 0.2);
  Accountant accountant(p, 100);
  accountant.record_training(50);
  accountant.record_deletion(5);
  const DeletionPlan first = accountant.plan_deletion(1.0);
  EXPECT_NEAR(first.z, 1.4069250235774806, 1e-12);
  EXPECT_EQ(first.steps, 19);
  accountant.record_training(first.steps);
  accountant.record_deletion(3);
  EXPECT_EQ(accountant.current_n(), 92);
  const std::vector<Phase> expected{{100, 50, 8}, {95, 19, 3}};
  EXPECT_EQ(accountant.history(), expected);
  const DeletionPlan second = accountant.plan_deletion(1.0);
  EXPECT_NEAR(second.z, 1.0766186580111112, 1e-12);
  EXPECT_EQ(second.steps, 16);
  EXPECT_DOUBLE_EQ(second.unlearning.delta, 0.01);

  const Accountant restored(p, 92, accountant.history(), accountant.delta());
  EXPECT_EQ(restored.plan_deletion(1.0).steps, 16);
}

TEST(AccountantAlpha, ClosedFormMatchesBruteForceGrid) {
  for (const double slope : {1e-6, 1e-3, 0.05, 0.7, 3.0}) {
    for (const double delta : {1e-2, 1e-5, 1e-9}) {
      const DpGuarantee closed = rdp_to_dp(slope, delta);
      double best = std::numeric_limits<double>::infinity();
      double best_alpha = 0.0;
      // Log-spaced grid over alpha - 1 in [1e-3, 1e7], 200k points.
      for (int i = 0; i <= 200000; ++i) {
        const double alpha = 1.0 + std::pow(10.0, -3.0 + 10.0 * i / 200000.0);
        const double eps = alpha * slope + std::log(1.0 / delta) / (alpha - 1.0);
        if (eps < best) best = eps, best_alpha = alpha;
      }
      EXPECT_LE(closed.epsilon, best * (1.0 + 1e-12)) << "slope " << slope << " delta " << delta;
      EXPECT_NEAR(closed.epsilon, best, 1e-6 * best) << "slope " << slope << " delta " << delta;
      EXPECT_NEAR(closed.alpha, best_alpha, 1e-3 * closed.alpha) << "slope " << slope << " delta " << delta;
    }
  }
}

TEST(AccountantAlpha, ZeroAndInfiniteSlopes) {
  const DpGuarantee zero = rdp_to_dp(0.0, 1e-3);
  EXPECT_EQ(zero.epsilon, 0.0);
  EXPECT_TRUE(std::isinf(zero.alpha));
  const DpGuarantee inf = rdp_to_dp(std::numeric_limits<double>::infinity(), 1e-3);
  EXPECT_TRUE(std::isinf(inf.epsilon));
}

TEST(AccountantMonotonicity, EpsilonFallsWithUnlearningSteps) {
  const NoisyGdParams p = params(0.05, 1.5, 0.1);
  const double z = after_deletion(p, 500, 300, 7).distance_bound();
  double previous = std::numeric_limits<double>::infinity();
  for (std::int64_t k = 1; k <= 400; ++k) {
    const double eps = rdp_to_dp(unlearning_rdp_slope(p, z, k), 1.0 / 500).epsilon;
    EXPECT_LT(eps, previous) << "k = " << k;
    previous = eps;
  }
  EXPECT_TRUE(std::isinf(unlearning_rdp_slope(p, z, 0)));
}

TEST(AccountantMonotonicity, StepsFallWithSigmaAndRiseWithDeletions) {
  std::int64_t previous = std::numeric_limits<std::int64_t>::max();
  for (const double sigma : {0.01, 0.02, 0.05, 0.1, 0.3, 1.0}) {
    const std::int64_t steps = after_deletion(params(0.01, 1.0, sigma), 1000, 500, 10).plan_deletion(1.0).steps;
    EXPECT_LE(steps, previous) << "sigma " << sigma;
    previous = steps;
  }
  EXPECT_LT(previous, after_deletion(params(0.01, 1.0, 0.01), 1000, 500, 10).plan_deletion(1.0).steps);

  std::int64_t fewer = 0;
  double z_fewer = 0.0;
  for (const std::int64_t deleted : {0, 1, 2, 5, 10, 50, 200, 999}) {
    const Accountant accountant = after_deletion(params(0.01, 1.0, 0.05), 1000, 500, deleted);
    const std::int64_t steps = accountant.plan_deletion(1.0).steps;
    EXPECT_GE(steps, fewer) << "deleted " << deleted;
    EXPECT_GE(accountant.distance_bound(), z_fewer) << "deleted " << deleted;
    fewer = steps;
    z_fewer = accountant.distance_bound();
  }
  EXPECT_GT(fewer, after_deletion(params(0.01, 1.0, 0.05), 1000, 500, 1).plan_deletion(1.0).steps);
}

TEST(AccountantMonotonicity, DpEpsilonGrowsWithTrainingSteps) {
  const NoisyGdParams p = params(0.01, 1.0, 0.05);
  double previous = 0.0;
  for (const std::int64_t k : {1, 2, 10, 100, 1000, 100000}) {
    const double slope = dp_rdp_slope(p, 1000, k);
    EXPECT_GT(slope, previous) << "K = " << k;
    previous = slope;
  }
  // K -> infinity: (sum c^j)^2 / sum c^{2j} -> (1+c)/(1-c).
  const double limit = std::pow(1.0 * 2 * std::sqrt(2.0) / 1000, 2) * (1.99 / 0.01) / (2 * 0.005);
  EXPECT_NEAR(dp_rdp_slope(p, 1000, 100000000), limit, 1e-9 * limit);
}

TEST(AccountantSteps, SmallestStepCountMeetsTargetAndOneLessDoesNot) {
  for (const double target : {0.05, 0.3, 1.0, 4.0}) {
    const NoisyGdParams p = params(0.02, 1.0, 0.05);
    const double z = after_deletion(p, 800, 250, 12).distance_bound();
    const std::int64_t k = unlearning_steps(p, z, target, 1.0 / 800);
    ASSERT_GE(k, 1);
    EXPECT_LE(rdp_to_dp(unlearning_rdp_slope(p, z, k), 1.0 / 800).epsilon, target);
    EXPECT_GT(rdp_to_dp(unlearning_rdp_slope(p, z, k - 1), 1.0 / 800).epsilon, target);
  }
}

TEST(AccountantSteps, VeryWeakContractionStillTerminates) {
  // c = 1 - 1e-9 and z = 3000: A(k) ~ z^2 / (2 s^2 k) puts K_U in the billions; the doubling
  // search must still find it exactly.
  const NoisyGdParams p = params(1e-9, 1.0, 0.1);
  const std::int64_t k = unlearning_steps(p, 3000.0, 1.0, 1e-3);
  EXPECT_GT(k, 1000000000);
  EXPECT_LE(rdp_to_dp(unlearning_rdp_slope(p, 3000.0, k), 1e-3).epsilon, 1.0);
  EXPECT_GT(rdp_to_dp(unlearning_rdp_slope(p, 3000.0, k - 1), 1e-3).epsilon, 1.0);
}

TEST(AccountantDecision, RetrainWhenUnlearningCostsMore) {
  EXPECT_TRUE(retrain_is_cheaper(101, 100));
  EXPECT_FALSE(retrain_is_cheaper(100, 100));
  EXPECT_FALSE(retrain_is_cheaper(0, 100));
}

TEST(AccountantCertification, ClipBelowSqrtTwoIsUncertified) {
  NoisyGdParams p = params(0.1, 1.0, 0.1);
  EXPECT_TRUE(is_certified(p));
  p.clip = 10.0;
  EXPECT_TRUE(is_certified(p));
  EXPECT_DOUBLE_EQ(gradient_bound(p), std::sqrt(2.0));
  p.clip = 1.0;
  EXPECT_FALSE(is_certified(p));
  EXPECT_DOUBLE_EQ(gradient_bound(p), 1.0);
  EXPECT_FALSE(after_deletion(p, 100, 10, 1).plan_deletion(1.0).certified);
}

TEST(AccountantRefusals, NamesTheParameterAndTheBound) {
  expect_refusal([] { validate(params(0.0, 1.0, 0.1)); }, "lambda = 0 must be > 0");
  expect_refusal([] { validate(params(-1.0, 1.0, 0.1)); }, "lambda");
  expect_refusal([] { validate(params(0.1, 1.0, 0.0)); }, "sigma = 0 must be > 0");
  expect_refusal([] { validate(params(0.1, 2.0, 0.1)); }, "eta = 2 must satisfy 0 < eta <= 1/(beta + lambda) = 1.666666667");
  expect_refusal([] { validate(params(0.1, 0.0, 0.1)); }, "eta = 0");
  expect_refusal([] { validate(params(std::nan(""), 1.0, 0.1)); }, "lambda = nan is not a finite number");
  expect_refusal([] { Accountant(params(0.1, 1.0, 0.1), 0); }, "n = 0 must be >= 1");
  expect_refusal([] { Accountant(params(0.1, 1.0, 0.1), 1); }, "delta = 1 must satisfy 0 < delta < 1");
  expect_refusal([] { Accountant(params(0.1, 1.0, 0.1), 10, 1.5); }, "delta = 1.5");
  expect_refusal([] { Accountant(params(0.1, 1.0, 0.1), 10, 0.0); }, "delta = 0");
  expect_refusal([] { after_deletion(params(0.1, 1.0, 0.1), 10, 5, 10); }, "deleting 10 of n = 10 records: needs n > deleted >= 0");
  expect_refusal([] { after_deletion(params(0.1, 1.0, 0.1), 10, 5, -1); }, "needs n > deleted >= 0");
  expect_refusal([] { (void)after_deletion(params(0.1, 1.0, 0.1), 10, 5, 1).plan_deletion(0.0); },
                 "target epsilon = 0 must be > 0");
  expect_refusal([] { (void)after_deletion(params(0.1, 1.0, 0.1), 10, 5, 1).plan_deletion(-1.0); },
                 "target epsilon");
  expect_refusal([] { Accountant(params(0.1, 1.0, 0.1), 90, {Phase{100, 5, 3}}, 0.01); }, "restored phase 0");
  expect_refusal([] { (void)rdp_to_dp(-1.0, 0.01); }, "Renyi slope");
}
