// Deletion capacity against a trained job: `lethe bench capacity --job DIR` simulates uniform deletions on
// the job's own sequences and must agree with m·L·H(m·min(B,L)) (DESIGN.md §3) within 10%.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/storage/scratch_files.h"
#include "tests/trainer/cli_job_fixture.h"
#include "trainer/capacity.h"
#include "trainer/s3t_plan.h"

using namespace lethe::test;
using namespace lethe::trainer;

class CapacityJob : public CliJobTest {};

TEST_F(CapacityJob, SimulatedCapacityOfATrainedJobMatchesTheFormula) {
  const auto config = write_config("job.yaml", JobShape{3, 3, 2, 1});
  ASSERT_EQ(pretrain(config).status, 0);
  const auto t = train(config, dir_ / "run");
  ASSERT_EQ(t.status, 0) << t.out;

  const auto before = snapshot(dir_ / "run");
  const auto r = run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "run").string() + " --trials 4000 --seed 5");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("# lethe bench capacity:"), std::string::npos) << r.out;  // the readable table
  const auto j = json_of(r);
  // The job's shape, read from its manifest.
  EXPECT_EQ(j.at("shards"), 3);
  EXPECT_EQ(j.at("slices"), 3);
  EXPECT_EQ(j.at("sequences"), 2);
  EXPECT_EQ(j.at("selection"), "cyclic");
  EXPECT_EQ(j.at("trials"), 4000);
  // m·L·H(m·min(B,L)) = 9·H(6).
  const double formula = 9.0 * (1 + 1 / 2.0 + 1 / 3.0 + 1 / 4.0 + 1 / 5.0 + 1 / 6.0);
  EXPECT_NEAR(j.at("formula").get<double>(), formula, 1e-9);
  const double mean = j.at("mean_deletions").get<double>();
  EXPECT_NEAR(mean, formula, 0.10 * formula) << r.out;
  EXPECT_NEAR(j.at("ratio").get<double>(), mean / formula, 1e-12);
  const auto ci = j.at("ci95");
  EXPECT_LT(ci[0].get<double>(), mean);
  EXPECT_GT(ci[1].get<double>(), mean);
  EXPECT_LT(ci[1].get<double>() - ci[0].get<double>(), 0.05 * mean) << "4000 trials should pin the mean down";
  EXPECT_LT(j.at("mean_live_shard_deletions").get<double>(), mean);
  EXPECT_TRUE(snapshot(dir_ / "run") == before) << "the benchmark must not write the job directory";

  // The same seed gives the same figures; another seed other ones.
  const auto again = json_of(run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "run").string() + " --trials 4000 --seed 5"));
  EXPECT_EQ(again.at("mean_deletions"), j.at("mean_deletions"));
  const auto other = json_of(run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "run").string() + " --trials 4000 --seed 6"));
  EXPECT_NE(other.at("mean_deletions"), j.at("mean_deletions"));
}

TEST(CapacityJobCli, BadInputsAreClearErrors) {
  const auto dir = lethe::storage::scratch::fresh_dir("capacity_cli", "bad_inputs");
  const auto dir_ = dir;
  auto r = run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "nowhere").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("lethe: error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("manifest.json"), std::string::npos) << r.out;

  fs::create_directories(dir_ / "other");
  std::ofstream(dir_ / "other" / "manifest.json") << R"({"format": "something-else"})";
  r = run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "other").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("not an S3T job manifest"), std::string::npos) << r.out;

  r = run_command(lethe_cmd() + " bench capacity --job " + (dir_ / "other").string() + " --trials 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--trials"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

// Plans taken from a job need not be cyclic: the simulation follows their actual first slices, and
// its exact expectation m·L·H(n) tracks them where the formula's m·min(B,L) does not.
TEST(CapacityOfPlans, FollowsThePlansFirstSlices) {
  // Two shards of 4 slices, 2 sequences each, both sequences starting with slice 0: n = 2 coupons.
  const ShardPlan shared_first = make_shard_plan(4, {{0, 1, 2, 3}, {0, 2, 3, 1}}, 4);
  const std::vector<ShardPlan> plans(2, shared_first);
  const CapacityResult r = simulate_capacity(plans, 4000, 3);
  EXPECT_EQ(r.shards, 2);
  EXPECT_EQ(r.budget, 2);
  EXPECT_NEAR(r.exact_expectation, 8.0 * 1.5, 1e-12);             // 8·H(2)
  EXPECT_NEAR(r.formula, 8.0 * (25.0 / 12.0), 1e-12);              // 8·H(4)
  EXPECT_NEAR(r.mean_deletions, r.exact_expectation, 0.05 * r.exact_expectation);
  EXPECT_GT(std::abs(r.mean_deletions - r.formula), 0.2 * r.formula);

  // Cyclic plans give the same stream of results as the (m, L, B) form.
  const ShardPlan cyclic = make_shard_plan(4, cyclic_sequences(4, 2), 4);
  const std::vector<ShardPlan> cyclic_plans(3, cyclic);
  const CapacityResult a = simulate_capacity(cyclic_plans, 500, 9);
  const CapacityResult b = simulate_capacity(3, 4, 2, SequenceSelection::kCyclic, 500, 9);
  EXPECT_EQ(a.mean_deletions, b.mean_deletions);
  EXPECT_DOUBLE_EQ(a.exact_expectation, a.formula);

  // A dead shard needs nothing more; plans of different shapes are refused.
  std::vector<ShardPlan> one_dead = cyclic_plans;
  for (auto& s : one_dead[0].sequences) s.surviving_prefix = 0;
  EXPECT_NEAR(simulate_capacity(one_dead, 10, 1).exact_expectation, 12.0 * harmonic_number(4), 1e-12);
  std::vector<ShardPlan> mixed = {cyclic, make_shard_plan(3, cyclic_sequences(3, 2), 3)};
  EXPECT_THROW((void)simulate_capacity(mixed, 10, 1), std::invalid_argument);
  EXPECT_THROW((void)simulate_capacity(std::vector<ShardPlan>{}, 10, 1), std::invalid_argument);
}
