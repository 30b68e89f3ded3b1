// `lethe validate --config FILE`: the checks `lethe train` makes before it trains (the YAML, the
// dataset, the backbone, the device), without training or writing anything; a JSON summary on stdout.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "trainer/job_manifest.h"
#include "trainer/job.h"

namespace lethe::launch {
namespace {

struct ValidateArgs {
  std::string config;
  std::string job;
};

void run(const ValidateArgs& args) {
  const auto config = with_job_dir(load_job_config(args.config), args.job);
  const auto inputs = trainer::check_job_inputs(config);
  check_job_not_served(config.job_dir);
  nlohmann::json out = {{"valid", true},
                        {"config", args.config},
                        {"config_digest", trainer::config_digest(config)},
                        {"models", inputs.models},
                        {"job_dir", config.job_dir.string()},
                        {"existing_run", std::filesystem::exists(trainer::job_manifest_path(config.job_dir))},
                        {"device", config.device},
                        {"dataset", {{"file", config.dataset.string()},
                                     {"records", inputs.records},
                                     {"live", inputs.live_records},
                                     {"trainable", inputs.trainable_records}}},
                        {"backbone", config.backbone.string()},
                        {"model", trainer::to_json(inputs.model)}};
  out.update(inputs.routes);
  std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<ValidateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "validate", "Check a job config as `lethe train` would (keys, dataset, backbone, device) without training");
  cmd->footer(
      "Examples:\n  lethe validate --config launch/examples/fashion_s3t.yaml\n"
      "  lethe validate --config job.yaml --job runs/fashion && mpirun -np 2 lethe train --config job.yaml --job runs/fashion\n"
      "Exit 0 and JSON {\"valid\": true, \"config\", \"models\", \"s3t\": {shards, slices, sequences, ...}, \"job_dir\", ...}\n"
      "on stdout (\"existing_run\": the job directory holds a run: train it with --resume or pick another);\n"
      "exit 1 and `lethe: error: FILE: KEY: what is wrong` on stderr otherwise. Writes nothing.");
  cmd->add_option("--config", args->config, "YAML job config (see launch/examples/)")->required();
  cmd->add_option("--job", args->job, "Job directory (overrides the config's job_dir, as for `lethe train`)");
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{24, install};

}  // namespace
}  // namespace lethe::launch
