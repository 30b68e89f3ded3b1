// `lethe accountant`: what one deletion from a noisy-GD model costs and certifies (DESIGN.md §4),
// after --train-steps steps of training (or a job config's noisy_gd.steps) on --n records, --deleted
// of which are deleted.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "trainer/accountant.h"

namespace lethe::launch {
namespace {

struct AccountantOptions {
  std::int64_t n = 0;
  std::int64_t deleted = 0;
  // No default: K_U depends on how far training went, and a guess too short certifies too little.
  std::optional<std::int64_t> train_steps;
  std::string config;  // a job config whose noisy_gd.steps gives train_steps
  double target_epsilon = 0.0;
  double delta = 0.0;
  bool delta_given = false;
  trainer::NoisyGdParams params;
};

// +inf (alpha when epsilon is 0) has no JSON spelling: null.
nlohmann::json finite_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

// --train-steps, or noisy_gd.steps of --config; an error saying what to pass when neither is given.
std::int64_t train_steps_of(const AccountantOptions& o) {
  if (!o.config.empty()) return load_job_config(o.config).noisy_gd.train_steps;
  if (!o.train_steps)
    throw std::invalid_argument(
        "accountant: --train-steps is required: pass the noisy-GD steps the model was trained for (noisy_gd.steps "
        "of its job config, e.g. --train-steps 200), or --config JOB.yaml to read them; K_U for a shorter "
        "training than the real one would be too small to certify the deletion");
  if (*o.train_steps < 0)
    throw trainer::AccountantError("accountant: --train-steps = " + std::to_string(*o.train_steps) + " must be >= 0");
  return *o.train_steps;
}

void run_accountant(const AccountantOptions& options) {
  AccountantOptions o = options;
  o.train_steps = train_steps_of(options);
  const std::int64_t train_steps = *o.train_steps;
  trainer::Accountant accountant(o.params, o.n, o.delta_given ? std::optional<double>(o.delta) : std::nullopt);
  accountant.record_training(train_steps);
  accountant.record_deletion(o.deleted);
  const trainer::DeletionPlan plan = accountant.plan_deletion(o.target_epsilon);
  const bool retrain = trainer::retrain_is_cheaper(plan.steps, train_steps);

  nlohmann::json out;
  out["steps"] = plan.steps;
  out["epsilon"] = plan.unlearning.epsilon;
  out["delta"] = plan.unlearning.delta;
  out["alpha"] = finite_or_null(plan.unlearning.alpha);
  out["dp_epsilon"] = plan.remaining_dp.epsilon;
  out["dp_alpha"] = finite_or_null(plan.remaining_dp.alpha);
  out["dp_steps"] = accountant.total_steps() + plan.steps;
  out["z"] = plan.z;
  out["certified"] = plan.certified;
  out["retrain"] = retrain;
  out["route"] = retrain ? "retrain" : "noisy_steps";
  out["target_epsilon"] = o.target_epsilon;
  out["assumptions"] = {
      {"n", o.n},
      {"deleted", o.deleted},
      {"remaining", accountant.current_n()},
      {"train_steps", train_steps},
      {"lambda", o.params.lambda},
      {"eta", o.params.eta},
      {"eta_max", 1.0 / (o.params.beta + o.params.lambda)},
      {"sigma", o.params.sigma},
      {"clip", o.params.clip},
      {"M", trainer::gradient_bound(o.params)},
      {"beta", o.params.beta},
      {"contraction", trainer::contraction(o.params)},
      {"step_noise_variance", trainer::step_noise_variance(o.params)},
  };
  if (!plan.certified)
    out["uncertified_reason"] = "clip below sqrt(2) truncates gradients and breaks the convexity the analysis needs";
  std::cout << out.dump(2) << '\n';
}

void install(CLI::App& app) {
  auto options = std::make_shared<AccountantOptions>();
  CLI::App* cmd = app.add_subcommand(
      "accountant",
      "Noisy-GD deletion certificate: the unlearning steps K_U for a target epsilon, and the DP of "
      "the remaining records, for --train-steps steps on --n records of which --deleted are deleted");
  cmd->footer(
      "Examples:\n  lethe accountant --n 54000 --deleted 1 --lambda 0.005 --eta 1.98 --sigma 0.01 --epsilon 1 --train-steps 200\n"
      "  lethe accountant --n 54000 --deleted 1 --lambda 0.005 --eta 1.98 --sigma 0.01 --epsilon 1 --config job.yaml\n"
      "--train-steps (or --config) is required: K_U depends on how long the model was trained.\n"
      "Prints JSON: steps (K_U noisy steps for the deletion), epsilon, delta, dp_epsilon, certified, and\n"
      "route (noisy_steps, or retrain when retraining from scratch costs fewer steps); assumptions echoes the inputs.");
  cmd->add_option("--n", options->n, "records in the training set")->required();
  cmd->add_option("--lambda", options->params.lambda, "L2 regularization (strong convexity), > 0")->required();
  cmd->add_option("--eta", options->params.eta, "step size, <= 1/(1/2 + lambda)")->required();
  cmd->add_option("--sigma", options->params.sigma, "noise: each step adds sqrt(2 eta sigma^2) N(0, I)")->required();
  cmd->add_option("--clip", options->params.clip, "per-example gradient clip; below sqrt(2) is uncertified")
      ->capture_default_str();
  cmd->add_option("--deleted", options->deleted, "records deleted after training")->required();
  cmd->add_option("--epsilon", options->target_epsilon, "target epsilon of the deletion certificate")->required();
  cmd->add_option("--delta", options->delta, "delta of the (epsilon, delta) guarantees (default 1/n)");
  auto* steps = cmd->add_option("--train-steps", options->train_steps,
                                "steps of the training phase before the deletion (required unless --config)");
  cmd->add_option("--config", options->config, "job config whose noisy_gd.steps gives --train-steps")->excludes(steps);
  cmd->callback([options, cmd] {
    options->delta_given = cmd->count("--delta") > 0;
    run_accountant(*options);
  });
}

const CommandRegistration registration{60, install};

}  // namespace
}  // namespace lethe::launch
