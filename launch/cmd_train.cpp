// `lethe train`: S3T training of a job config over the MPI ranks (DESIGN.md §3, §5); rank 0 prints
// a JSON report with throughput and the digest of every prefix checkpoint.
#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "trainer/s3t_job.h"

namespace lethe::launch {
namespace {

struct TrainArgs {
  std::string config;
  std::string job;
  bool resume = false;
  std::string backend = "mpi";
};

void run(const TrainArgs& args) {
  const auto config = load_job_config(args.config);
  const auto spec = to_job_spec(config, args.job);
  auto comm = comm::make_communicator(args.backend);
  const auto report = trainer::run_s3t_job(spec, *comm, args.resume);
  if (comm->rank() != 0) return;
  const nlohmann::json out = {
      {"job_dir", spec.job_dir.string()},
      {"ranks", comm->size()},
      {"shards", spec.shards},
      {"slices", spec.slices},
      {"sequences", spec.sequences},
      {"rank0", {{"jobs", report.jobs}, {"steps_trained", report.steps_trained}, {"steps_resumed", report.steps_resumed},
                 {"train_seconds", report.train_seconds}, {"cache_seconds", report.cache_seconds}}},
      {"samples", report.total_samples},
      {"seconds", report.seconds},
      {"samples_per_second", report.seconds > 0 ? static_cast<double>(report.total_samples) / report.seconds : 0.0},
      {"digests", report.digests}};
  std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "S3T training: every (shard, sequence) job of a config, spread over MPI ranks");
  cmd->footer(
      "Example:\n  lethe pretrain --config launch/examples/fashion_s3t.yaml\n"
      "  mpirun -np 2 lethe train --config launch/examples/fashion_s3t.yaml --job runs/fashion\n"
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
