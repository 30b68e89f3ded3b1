// Tests of `lethe accountant` through the built binary: its JSON against the library and the
// hand-computed values of test_accountant.cpp, and its refusals.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <sys/wait.h>

#include "trainer/accountant.h"

namespace {

struct CliResult {
  int status = -1;
  std::string output;
};

// Runs `lethe <args>` with stderr folded into stdout.
CliResult run_lethe(const std::string& args) {
  const std::string command = std::string(LETHE_BINARY) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed for: " + command);
  CliResult run;
  char buffer[4096];
  std::size_t read = 0;
  while ((read = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) run.output.append(buffer, read);
  const int raw = ::pclose(pipe);
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return run;
}

}  // namespace

TEST(AccountantCli, PrintsHandComputedCertificate) {
  const CliResult run = run_lethe("accountant --n 1000 --lambda 0.01 --eta 1 --sigma 0.05 --clip 1.5 --deleted 10 "
                            "--epsilon 1 --train-steps 100");
  ASSERT_EQ(run.status, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output);
  EXPECT_EQ(out.at("steps").get<std::int64_t>(), 262);
  EXPECT_NEAR(out.at("epsilon").get<double>(), 0.9910179430308623, 1e-10);
  EXPECT_DOUBLE_EQ(out.at("delta").get<double>(), 1e-3);
  EXPECT_NEAR(out.at("alpha").get<double>(), 15.423975392963527, 1e-8);
  EXPECT_NEAR(out.at("dp_epsilon").get<double>(), 2.2176369366360094, 1e-10);
  EXPECT_NEAR(out.at("z").get<double>(), 1.7931313221546346, 1e-12);
  EXPECT_TRUE(out.at("certified").get<bool>());  // clip 1.5 >= sqrt(2)
  EXPECT_TRUE(out.at("retrain").get<bool>());    // 262 steps > 100 steps of retraining
  EXPECT_EQ(out.at("assumptions").at("remaining").get<std::int64_t>(), 990);
  EXPECT_DOUBLE_EQ(out.at("assumptions").at("M").get<double>(), std::sqrt(2.0));
}

TEST(AccountantCli, ExplicitDeltaMatchesTheLibrary) {
  const CliResult run = run_lethe("accountant --n 5000 --lambda 0.05 --eta 1.5 --sigma 0.2 --deleted 3 --epsilon 0.5 "
                            "--delta 1e-6 --train-steps 1000");
  ASSERT_EQ(run.status, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output);
  lethe::trainer::NoisyGdParams p;
  p.lambda = 0.05;
  p.eta = 1.5;
  p.sigma = 0.2;
  lethe::trainer::Accountant accountant(p, 5000, 1e-6);
  accountant.record_training(out.at("assumptions").at("train_steps").get<std::int64_t>());
  accountant.record_deletion(3);
  const auto plan = accountant.plan_deletion(0.5);
  EXPECT_EQ(out.at("assumptions").at("train_steps").get<std::int64_t>(), 1000);
  EXPECT_EQ(out.at("steps").get<std::int64_t>(), plan.steps);
  EXPECT_GT(plan.steps, 0);
  EXPECT_DOUBLE_EQ(out.at("epsilon").get<double>(), plan.unlearning.epsilon);
  EXPECT_DOUBLE_EQ(out.at("delta").get<double>(), 1e-6);
  EXPECT_DOUBLE_EQ(out.at("dp_epsilon").get<double>(), plan.remaining_dp.epsilon);
  EXPECT_FALSE(out.at("retrain").get<bool>());
  EXPECT_EQ(out.at("route").get<std::string>(), "noisy_steps");
}

TEST(AccountantCli, NothingDeletedHasNullAlpha) {
  const CliResult run = run_lethe("accountant --n 100 --lambda 0.1 --eta 1 --sigma 0.1 --deleted 0 --epsilon 1 --train-steps 1000");
  ASSERT_EQ(run.status, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output);
  EXPECT_EQ(out.at("steps").get<std::int64_t>(), 0);
  EXPECT_EQ(out.at("epsilon").get<double>(), 0.0);
  EXPECT_TRUE(out.at("alpha").is_null());
}

TEST(AccountantCli, SmallClipIsMarkedUncertified) {
  const CliResult run = run_lethe("accountant --n 100 --lambda 0.1 --eta 1 --sigma 0.1 --clip 0.5 --deleted 2 --epsilon 1 --train-steps 1000");
  ASSERT_EQ(run.status, 0) << run.output;
  const nlohmann::json out = nlohmann::json::parse(run.output);
  EXPECT_FALSE(out.at("certified").get<bool>());
  EXPECT_TRUE(out.contains("uncertified_reason"));
  EXPECT_DOUBLE_EQ(out.at("assumptions").at("M").get<double>(), 0.5);
}

TEST(AccountantCli, RefusesBadParametersWithTheBound) {
  CliResult run = run_lethe("accountant --n 100 --lambda 0.1 --eta 2 --sigma 0.1 --deleted 2 --epsilon 1 --train-steps 1000");
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("eta = 2 must satisfy 0 < eta <= 1/(beta + lambda) = 1.666666667"), std::string::npos)
      << run.output;
  run = run_lethe("accountant --n 100 --lambda 0.1 --eta 1 --sigma 0.1 --deleted 100 --epsilon 1 --train-steps 1000");
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("needs n > deleted >= 0"), std::string::npos) << run.output;
  run = run_lethe("accountant --n 100 --lambda 0.1 --eta 1 --sigma 0.1 --deleted 1 --epsilon 1 --delta 2 --train-steps 1000");
  EXPECT_EQ(run.status, 1);
  EXPECT_NE(run.output.find("delta = 2"), std::string::npos) << run.output;
  run = run_lethe("accountant --n 100 --lambda 0.1 --eta 1 --deleted 1 --epsilon 1");  // --sigma missing
  EXPECT_EQ(run.status, 2);
  EXPECT_NE(run.output.find("--sigma"), std::string::npos) << run.output;
}

// Issue 14 finding 12: without --train-steps the certificate silently assumed 1000 training steps,
// too few for a model trained longer (its K_U came out too small). Now it is required, or read
// from the job config's noisy_gd.steps.
TEST(AccountantCli, TrainStepsAreRequiredOrReadFromTheJobConfig) {
  const std::string base = "accountant --n 5000 --lambda 0.05 --eta 1.5 --sigma 0.2 --deleted 3 --epsilon 0.5";
  CliResult run = run_lethe(base);
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_NE(run.output.find("--train-steps is required"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("--config JOB.yaml"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("\"steps\""), std::string::npos) << "no certificate may be printed: " << run.output;

  const std::string config = ::testing::TempDir() + "/accountant_job.yaml";
  {
    FILE* file = std::fopen(config.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fputs("dataset: d.h5\nbackbone: b.h5\nnoisy_gd: {steps: 4321}\n", file);
    std::fclose(file);
  }
  run = run_lethe(base + " --config " + config);
  ASSERT_EQ(run.status, 0) << run.output;
  const nlohmann::json from_config = nlohmann::json::parse(run.output);
  EXPECT_EQ(from_config.at("assumptions").at("train_steps").get<std::int64_t>(), 4321);
  run = run_lethe(base + " --train-steps 4321");
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_EQ(nlohmann::json::parse(run.output).at("steps"), from_config.at("steps"));

  run = run_lethe(base + " --train-steps 10 --config " + config);
  EXPECT_EQ(run.status, 2) << "one source of the training length, not two: " << run.output;
}
