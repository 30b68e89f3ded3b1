// `lethe eval`: the accuracy of a job's models on a dataset, as JSON on stdout: the S3T ensemble
// (each shard's served sequence and depth) and the noisy-GD model (the version the manifest names).
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "launch/command_registry.h"
#include "trainer/job.h"

namespace lethe::launch {
namespace {

struct EvalArgs {
  std::string job;
  std::string data;
};

void install(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Accuracy of a trained job's models: S3T ensemble (served prefixes, live shards), noisy GD");
  cmd->footer(
      "Example:\n  lethe eval --job runs/fashion --data data/fashion-test.h5\n"
      "\"accuracy\" is the S3T ensemble's when the job has S3T, else the noisy-GD model's; \"models\" lists each.");
  cmd->add_option("--job", args->job, "Job directory written by `lethe train`")->required();
  cmd->add_option("--data", args->data, "Dataset to evaluate on (default: the config's test_dataset)");
  cmd->callback([args] {
    const auto result = trainer::evaluate_job(args->job, args->data);
    const nlohmann::json out = {{"job_dir", args->job}, {"accuracy", result.accuracy}, {"records", result.records}, {"models", result.models}};
    std::cout << out.dump(2) << std::endl;
  });
}

const CommandRegistration registration{30, install};

}  // namespace
}  // namespace lethe::launch
