// `lethe retrain --job DIR`: the scheduled job that restores every truncated S3T sequence to full depth
// on the remaining data (DESIGN.md §3), spread over the MPI ranks; rank 0 prints a JSON report.
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "trainer/job_manifest.h"
#include "trainer/s3t_retrain.h"

namespace lethe::launch {
namespace {

namespace fs = std::filesystem;

struct RetrainArgs {
  std::string job;
  std::string backend = "mpi";
};

void drop_nulls(nlohmann::json& object) {
  if (!object.is_object()) return;
  for (auto it = object.begin(); it != object.end();) {
    if (it->is_null()) {
      it = object.erase(it);
    } else {
      drop_nulls(*it);
      ++it;
    }
  }
}

// The job as its directory describes it: config.json (the canonical config the run recorded) and the
// backbone.h5 copy, so that moving or editing the original YAML changes nothing.
trainer::S3TJobSpec spec_from_job_dir(const fs::path& job_dir) {
  const auto file = fs::absolute(job_dir / "config.json");
  if (!fs::exists(file)) {
    throw std::invalid_argument(job_dir.string() + " holds no config.json; pass a job directory written by `lethe train`");
  }
  auto config = trainer::read_json_file(file);
  // config.json also records what training derived (model.sites = s3t.slices, and the model's input
  // shape), and unset settings as null (test_dataset as ""): none of them is a key a config sets.
  if (config.contains("model") && config["model"].is_object()) {
    config["model"].erase("sites");
    config["model"].erase("input_shape");
  }
  if (config.value("test_dataset", std::string("?")).empty()) config.erase("test_dataset");
  drop_nulls(config);
  const auto parsed = parse_job_config(config.dump(), file);  // YAML reads JSON
  auto spec = to_job_spec(parsed, job_dir);
  spec.backbone = job_dir / "backbone.h5";
  return spec;
}

void run(const RetrainArgs& args) {
  const auto spec = spec_from_job_dir(args.job);
  auto comm = comm::make_communicator(args.backend);
  const auto report = trainer::retrain_job(spec, *comm);
  if (comm->rank() != 0) return;
  const nlohmann::json out = {{"job_dir", spec.job_dir.string()},
                              {"ranks", comm->size()},
                              {"retrained", report.retrained},
                              {"sequences_restored", report.sequences_restored},
                              {"shards_revived", report.shards_revived},
                              {"checkpoints_purged", report.checkpoints_purged},
                              {"steps_planned", report.steps_planned},
                              {"steps_trained", report.steps_trained},
                              {"samples", report.samples},
                              {"model_version", report.model_version},
                              {"seconds", report.seconds},
                              {"digests", report.digests}};
  std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<RetrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "retrain", "Restore truncated S3T sequences to full depth on the remaining data (scheduled job; takes the job lock)");
  cmd->footer(
      "Example:\n  mpirun -np 2 lethe retrain --job runs/fashion-s3t\n"
      "Each truncated sequence continues from its surviving prefix with the original seeds on the dataset's\n"
      "live records; dead shards are trained from scratch. Refuses while `lethe serve` or another writer\n"
      "holds the job. Prints JSON: sequences restored, steps trained, the new model_version, seconds.");
  cmd->add_option("--job", args->job, "Job directory written by `lethe train`")->required();
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{27, install};

}  // namespace
}  // namespace lethe::launch
