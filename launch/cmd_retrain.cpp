// `lethe retrain --job DIR`: the scheduled job that restores every truncated S3T sequence to full depth
// on the remaining data (DESIGN.md §3), spread over the MPI ranks; rank 0 prints a JSON report.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "comm/agree.h"
#include "storage/job_lock.h"
#include "trainer/job.h"
#include "trainer/routes.h"

namespace lethe::launch {
namespace {

namespace fs = std::filesystem;

struct RetrainArgs {
  std::string job;
  std::string backend = "mpi";
};

void run(const RetrainArgs& args) {
  const fs::path job = args.job;
  auto comm = comm::make_communicator(args.backend);
  std::unique_ptr<storage::JobLock> lock;
  comm::on_root(*comm, "locking the job directory", [&] {
    if (!fs::exists(trainer::job_config_json_path(job))) {
      throw std::invalid_argument(job.string() + " holds no config.json; pass a job directory written by `lethe train`");
    }
    lock = std::make_unique<storage::JobLock>(job, "lethe retrain");
  });
  auto manifest = trainer::open_trained_job(job, *comm);
  // The job's config.json must still describe the run, or a retrain would not reproduce it.
  comm::on_root(*comm, "checking the job's config", [&] { trainer::verify_config_json(manifest); });
  const auto start = std::chrono::steady_clock::now();
  nlohmann::json out = {{"job_dir", job.string()}, {"ranks", comm->size()}, {"retrained", false}};
  for (const auto& kind : trainer::route_kinds()) {
    if (kind.retrain == nullptr || manifest.section(kind.name) == nullptr) continue;
    const auto report = kind.retrain(manifest, *comm);
    out["retrained"] = out["retrained"].get<bool>() || report.value("retrained", false);
    out[std::string(kind.name)] = report;
  }
  out["model_version"] = manifest.model_version;
  out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (comm->rank() == 0) std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<RetrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "retrain", "Restore truncated S3T sequences to full depth on the remaining data (scheduled job; takes the job lock)");
  cmd->footer(
      "Example:\n  mpirun -np 2 lethe retrain --job runs/fashion-s3t\n"
      "Each truncated sequence continues from its surviving prefix with the original seeds on the dataset's\n"
      "live records; dead shards are trained from scratch. Refuses while `lethe serve` or another writer\n"
      "holds the job, or when config.json, the dataset or the backbone no longer match the job's manifest.\n"
      "Prints JSON: \"retrained\", the new model_version, seconds, and per model what it restored\n"
      "(\"s3t\": sequences_restored, steps_trained, digests).");
  cmd->add_option("--job", args->job, "Job directory written by `lethe train`")->required();
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{27, install};

}  // namespace
}  // namespace lethe::launch
