// `lethe train`: trains a job config's models over the MPI ranks: S3T (DESIGN.md §3; (shard, sequence)
// jobs spread over ranks) and/or noisy GD (§4; data-parallel over all ranks). Rank 0 prints a JSON
// report with throughput and the digest of every committed checkpoint.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "storage/job_lock.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/s3t_job.h"

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
std::unique_ptr<storage::JobLock> lock_job_for_training(const trainer::S3TJobSpec& spec, bool s3t,
                                                        comm::Communicator& comm) {
  std::unique_ptr<storage::JobLock> lock;
  std::string error;
  if (comm.rank() == 0) {
    try {
      (void)trainer::check_job_inputs(spec, s3t);
      std::filesystem::create_directories(spec.job_dir);
      lock = std::make_unique<storage::JobLock>(spec.job_dir, "lethe train");
      check_job_not_served(spec.job_dir);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  trainer::agree_on_failure(comm, error, "locking the job directory");
  return lock;
}

void run(const TrainArgs& args) {
  const auto config = load_job_config(args.config);
  const auto spec = to_job_spec(config, args.job);
  auto comm = comm::make_communicator(args.backend);
  const auto lock = lock_job_for_training(spec, config.s3t.enabled, *comm);
  nlohmann::json out = {{"job_dir", spec.job_dir.string()}, {"ranks", comm->size()}, {"models", nlohmann::json::array()}};
  if (config.s3t.enabled) {
    const auto report = trainer::run_s3t_job(spec, *comm, args.resume);
    out["models"].push_back("s3t");
    out.update({{"shards", spec.shards},
                {"slices", spec.slices},
                {"sequences", spec.sequences},
                {"rank0", {{"jobs", report.jobs}, {"steps_trained", report.steps_trained},
                           {"steps_resumed", report.steps_resumed}, {"train_seconds", report.train_seconds},
                           {"cache_seconds", report.cache_seconds}}},
                {"samples", report.total_samples},
                {"seconds", report.seconds},
                {"samples_per_second",
                 report.seconds > 0 ? static_cast<double>(report.total_samples) / report.seconds : 0.0},
                {"digests", report.digests}});
  }
  if (config.noisy_gd.enabled) {
    const auto report = trainer::run_noisy_gd_job(spec, to_noisy_gd_spec(config), *comm, args.resume,
                                                  /*job_dir_prepared=*/config.s3t.enabled);
    out["models"].push_back("noisy_gd");
    out["noisy_gd"] = {{"records", report.records},
                       {"steps", report.steps},
                       {"resumed", report.resumed},
                       {"version", report.version},
                       {"digest", report.digest},
                       {"train_accuracy", report.train_accuracy},
                       {"rank0", {{"records", report.local_records}, {"feature_seconds", report.feature_seconds}}},
                       {"train_seconds", report.train_seconds},
                       {"seconds", report.seconds}};
  }
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
      "Same config and seed give the same checkpoint digests for any number of ranks.");
  cmd->add_option("--config", args->config, "YAML job config (see launch/examples/)")->required();
  cmd->add_option("--job", args->job, "Job directory (overrides the config's job_dir)");
  cmd->add_flag("--resume", args->resume, "Continue an interrupted run from its last committed prefix checkpoints");
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{25, install};

}  // namespace
}  // namespace lethe::launch
