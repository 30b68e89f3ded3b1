// `lethe eval`: the S3T ensemble's accuracy on a dataset, with each shard's served sequence and
// depth, as JSON on stdout.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "launch/command_registry.h"
#include "trainer/s3t_job.h"

namespace lethe::launch {
namespace {

struct EvalArgs {
  std::string job;
  std::string data;
};

void install(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Accuracy of a trained S3T job's ensemble (served prefixes, live shards)");
  cmd->footer("Example:\n  lethe eval --job runs/fashion --data data/fashion-test.h5");
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
