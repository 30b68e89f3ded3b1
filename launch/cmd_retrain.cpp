// `lethe retrain --job DIR`: the scheduled job that restores every truncated S3T sequence to full depth
// on the remaining data (DESIGN.md §3), spread over the MPI ranks; rank 0 prints a JSON report.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "comm/agree.h"
#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "storage/dataset.h"
#include "storage/error.h"
#include "storage/job_lock.h"
#include "trainer/job.h"
#include "trainer/job_retrain.h"

namespace lethe::launch {
namespace {

namespace fs = std::filesystem;

struct RetrainArgs {
  std::string job;
  std::string id;
  bool wait = true;
  int wait_s = 3600;
  std::string backend = "mpi";
};

// Rank 0: adopts the run when no writer holds the job (taking its lock for the commit); returns
// false when a writer (`lethe serve`) holds it: the writer adopts it at its next commit.
bool adopt_if_no_writer(const fs::path& job, const trainer::RetrainRun& run) {
  std::unique_ptr<storage::JobLock> writer;
  try {
    writer = std::make_unique<storage::JobLock>(job, "lethe retrain (adopting)");
  } catch (const storage::StorageError& e) {
    if (e.kind() != storage::StorageErrorKind::kLocked) throw;
    return false;
  }
  const auto current = trainer::read_job_manifest(job);
  if (current.last_retrain && current.last_retrain->details.value("id", std::string()) == run.id) {
    trainer::finish_adoption(current);  // a writer committed the swap and stopped before finishing it
    return true;
  }
  const auto dataset = storage::Dataset::open(current.dataset.path);
  auto adoption = trainer::plan_adoption(current, run, dataset);
  trainer::commit_job_manifest(adoption.next);
  trainer::finish_adoption(adoption.next);
  return true;
}

void run(const RetrainArgs& args) {
  const fs::path job = args.job;
  const auto start = std::chrono::steady_clock::now();
  auto comm = comm::make_communicator(args.backend);
  std::unique_ptr<storage::JobLock> lock;
  std::string id = args.id;
  comm::on_root(*comm, "locking the job's retrain", [&] {
    if (!fs::exists(trainer::job_config_json_path(job))) {
      throw std::invalid_argument(job.string() + " holds no config.json; pass a job directory written by `lethe train`");
    }
    if (!id.empty() && (id.size() > 32 || id.find_first_not_of("0123456789abcdef") != std::string::npos)) {
      throw std::invalid_argument("--id '" + id + "': expected up to 32 lowercase hex digits");
    }
    lock = std::make_unique<storage::JobLock>(job, "lethe retrain", storage::JobLock::Kind::kRetrain);
  });
  const auto manifest = trainer::open_trained_job(job, *comm);
  // The job's config.json must still describe the run, or a retrain would not reproduce it.
  comm::on_root(*comm, "checking the job's config", [&] {
    trainer::verify_config_json(manifest);
    if (id.empty()) id = trainer::new_retrain_id(job);
  });
  id = comm::broadcast_string(*comm, id);
  const auto run = trainer::run_retrain(manifest, id, *comm);
  if (comm->rank() != 0) return;
  nlohmann::json out = {{"job_dir", job.string()},
                        {"ranks", comm->size()},
                        {"id", id},
                        {"retrained", run.status == trainer::RetrainStatus::kTrained}};
  for (const auto& [name, result] : run.routes.items()) out[name] = result.at("report");
  std::string adopted_by = "nobody: nothing to retrain";
  std::int64_t model_version = manifest.model_version;
  if (run.status == trainer::RetrainStatus::kTrained) {
    if (adopt_if_no_writer(job, run)) {
      adopted_by = "lethe retrain";
    } else {
      adopted_by = "the job's writer";
      spdlog::info("retrain {}: trained; the process holding {} adopts it at its next commit", id, job.string());
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.wait_s);
      while (args.wait) {
        const auto now = trainer::find_retrain_run(job, id);
        if (now && now->status == trainer::RetrainStatus::kAdopted) break;
        if (now && now->status == trainer::RetrainStatus::kFailed) {
          throw std::runtime_error("retrain " + id + " was trained but not adopted: " + now->error);
        }
        // The writer stopped before adopting it: nobody else will until another starts.
        if (now && !storage::JobLock::holder(job, storage::JobLock::Kind::kWriter) && adopt_if_no_writer(job, *now)) {
          adopted_by = "lethe retrain (the job's writer stopped before adopting it)";
          break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
          throw std::runtime_error("retrain " + id + " is trained, but the job's writer has not adopted it within " +
                                   std::to_string(args.wait_s) + " s; it will when it next commits (`lethe status --job " +
                                   job.string() + "` shows it)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
    if (const auto adopted = trainer::find_retrain_run(job, id); adopted && adopted->status == trainer::RetrainStatus::kAdopted) {
      model_version = adopted->model_version;
      out["adoption"] = adopted->adoption;
    }
  }
  out["adopted_by"] = adopted_by;
  out["model_version"] = model_version;
  out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<RetrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "retrain", "Restore truncated S3T sequences to full depth on the remaining data, beside a running service");
  cmd->footer(
      "Example:\n  mpirun -np 2 lethe retrain --job runs/fashion-s3t\n"
      "Each truncated sequence continues from its surviving prefix with the original seeds on the records\n"
      "live when it starts, into new checkpoint series; dead shards are trained from scratch. It may run\n"
      "while `lethe serve` serves the job (e.g. as a SLURM job on other nodes): the service adopts the\n"
      "result at its next commit, after forgetting every record deleted meanwhile; with no service it\n"
      "adopts it itself. One retrain at a time per job. Refuses when config.json, the dataset or the\n"
      "backbone no longer match the job's manifest. Prints JSON: \"retrained\", \"adopted_by\", the new\n"
      "model_version, seconds, and per model what it restored (\"s3t\": sequences_restored, steps_trained).\n");
  cmd->add_option("--job", args->job, "Job directory written by `lethe train`")->required();
  cmd->add_option("--id", args->id, "Retrain id (hex; default a new one): what POST /v1/retrain reports on");
  cmd->add_flag("!--no-wait", args->wait, "With a service running, exit once trained instead of waiting for its adoption");
  cmd->add_option("--wait-timeout", args->wait_s, "Seconds to wait for the service's adoption")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{27, install};

}  // namespace
}  // namespace lethe::launch
