// `lethe train`: trains a job config's models over the MPI ranks, each through its route's training
// (trainer/routes.h): S3T ((shard, sequence) jobs spread over ranks, DESIGN.md §3) and/or noisy GD
// (§4; data-parallel over all ranks). Rank 0 prints a JSON report, one entry per model.
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/agree.h"
#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "storage/job_lock.h"
#include "trainer/job.h"

namespace lethe::launch {
namespace {

struct TrainArgs {
  std::string config;
  std::string job;
  bool resume = false;
  std::string backend = "mpi";
};

// One writer per job (storage/job_lock.h): training holds the job lock on rank 0, so it refuses a
// job that `lethe serve`, `lethe delete --job`, `lethe retrain` or another `lethe train` holds. A
// job with a deletion ledger has served deletions: resuming its training would mix models trained
// before and after them, so it is refused with a pointer to `lethe retrain`. The inputs are checked
// first, so that bad input creates no job directory.
std::unique_ptr<storage::JobLock> lock_job_for_training(const JobConfig& config, comm::Communicator& comm) {
  std::unique_ptr<storage::JobLock> lock;
  comm::on_root(comm, "locking the job directory", [&] {
    (void)trainer::check_job_inputs(config);
    std::filesystem::create_directories(config.job_dir);
    lock = std::make_unique<storage::JobLock>(config.job_dir, "lethe train");
    check_job_not_served(config.job_dir);
  });
  return lock;
}

void run(const TrainArgs& args) {
  const auto config = with_job_dir(load_job_config(args.config), args.job);
  auto comm = comm::make_communicator(args.backend);
  const auto lock = lock_job_for_training(config, *comm);
  auto out = trainer::train_job(config, *comm, args.resume);
  out["job_dir"] = config.job_dir.string();
  out["ranks"] = comm->size();
  if (comm->rank() == 0) std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Train a job config's models over MPI ranks: S3T ((shard, sequence) jobs) and/or noisy GD (data-parallel)");
  cmd->footer(
      "Example:\n  lethe pretrain --config launch/examples/fashion_s3t.yaml\n"
      "  mpirun -np 2 lethe train --config launch/examples/fashion_s3t.yaml --job runs/fashion\n"
      "  mpirun -np 2 lethe train --config launch/examples/fashion_noisy_gd.yaml   # noisy GD only\n"
      "S3T trains unless the config says s3t: {enabled: false}; noisy GD when it has a noisy_gd: section.\n"
      "Prints JSON: \"models\" trained, and per model its report (\"s3t\": digests of every prefix checkpoint,\n"
      "samples/s; \"noisy_gd\": version, digest, accuracy). Same config and seed give the same digests for any\n"
      "number of ranks.");
  cmd->add_option("--config", args->config, "YAML job config (see launch/examples/)")->required();
  cmd->add_option("--job", args->job, "Job directory (overrides the config's job_dir)");
  cmd->add_flag("--resume", args->resume, "Continue an interrupted run from its last committed prefix checkpoints");
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{25, install};

}  // namespace
}  // namespace lethe::launch
