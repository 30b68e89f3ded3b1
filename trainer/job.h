// trainer/job.h — what every model of a job shares: the job directory's layout, the checks of its
// inputs before training, preparing it, opening it (the manifest verified on rank 0 and given to
// every rank, the backbone and the dataset checked against what the job recorded), and evaluation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"
#include "trainer/job_settings.h"
#include "trainer/model_config.h"

namespace lethe::storage {
class Dataset;  // storage/dataset.h
}  // namespace lethe::storage

namespace lethe::trainer {

class FrozenBackbone;
class Trunk;  // trainer/trunk.h
class ModelRoute;

// Job directory layout (docs/JOB.md):
//   <job_dir>/manifest.json       the commit marker (trainer/job_manifest.h)
//   <job_dir>/config.yaml         the config as given (when trained from a file)
//   <job_dir>/config.json         the canonical config, for people; its digest must match the manifest's
//   <job_dir>/<backbone_file>     the frozen backbone the run used (manifest: backbone.file, sha256)
//   <job_dir>/<checkpoints>/      one checkpoint series per model part (manifest: checkpoints)
//   <job_dir>/ledger.sqlite       the deletion ledger, once the job has taken a deletion request
//   <job_dir>/.lock               the writer lock (storage/job_lock.h)
[[nodiscard]] std::filesystem::path job_config_yaml_path(const std::filesystem::path& job_dir);
[[nodiscard]] std::filesystem::path job_config_json_path(const std::filesystem::path& job_dir);

// Fails with a clear message when `device` is "cuda" and libtorch sees no CUDA device.
void check_device(const std::string& device, const std::filesystem::path& config_file);

// The job's dataset, opened read-only after check_device(): an error naming the config's `dataset:`
// key when the file does not exist.
[[nodiscard]] storage::Dataset open_job_dataset(const JobSettings& settings);

// The model's shape for `settings` on `dataset` (input shape from the dataset's records; with a
// trunk, its input and output shapes, probed), validated: TrainerError kInvalidInput naming the
// config and both shapes when the trunk's output is not what the blocks take.
[[nodiscard]] ModelConfig job_model_config(const JobSettings& settings, const storage::Dataset& dataset);

// The trunk of `model` (job_model_config) loaded on the job's device, its SHA-256 checked; nullptr
// when the model has none.
[[nodiscard]] std::shared_ptr<const Trunk> load_job_trunk(const JobSettings& settings, const ModelConfig& model);

// What check_job_inputs found.
struct JobInputsReport {
  std::uint64_t records = 0;            // rows, tombstoned included
  std::uint64_t live_records = 0;
  std::uint64_t trainable_records = 0;  // live and not public: what the models train on
  ModelConfig model;                    // with the dataset's input shape
  std::vector<std::string> models;                    // the routes the settings configure, in registry order
  nlohmann::json routes = nlohmann::json::object();  // per configured route, its own checks' summary
};

// Everything a run checks before it trains, without writing anything: the device, the dataset
// (exists, is a Lethe dataset, has records to train on, and what each configured route needs) and
// the backbone (exists and matches the model). Throws the errors training would.
[[nodiscard]] JobInputsReport check_job_inputs(const JobSettings& settings);

// Collective (rank 0 writes). Creates the job directory for `settings`: config.yaml and
// config.json, the backbone copy, checkpoints/, and the manifest (status training, the dataset's
// identity, the backbone's digest, no model section yet). With `resume`, a directory that already
// holds a manifest must hold a run of the same config; without it, one that does is refused.
void prepare_job_dir(const JobSettings& settings, const storage::Dataset& dataset, bool resume,
                     comm::Communicator& comm);

// Collective; the caller holds the job lock. `lethe train`'s work: prepares the job directory,
// trains every model the settings configure (trainer/routes.h, in registry order; each commits its
// manifest section) and marks the job trained. Returns {"models": [names], <name>: its report}.
[[nodiscard]] nlohmann::json train_job(const JobSettings& settings, comm::Communicator& comm, bool resume);

// Rank 0 checks of a job against its manifest, each a TrainerError (kMismatch) naming the file and
// what to do: the backbone's SHA-256, config.json's digest, and the dataset's uuid and content
// (which may lag the manifest only by the last batch's rows still to erase).
void verify_backbone(const JobManifest& manifest);
void verify_trunk(const JobManifest& manifest);  // model.trunk's copy in the job; nothing without a trunk
void verify_config_json(const JobManifest& manifest);
void verify_dataset(const JobManifest& manifest, const storage::Dataset& dataset);

// Collective. Rank 0 reads the manifest and checks it (trained, backbone, dataset); every rank
// gets the same manifest. Errors reach every rank (comm/agree.h).
[[nodiscard]] JobManifest open_trained_job(const std::filesystem::path& job_dir, comm::Communicator& comm);

// Collective. The job's routes over `comm` on an open job: the backbone loaded and the dataset
// opened on every rank; `for_deletion` as RouteContext says.
struct LoadedRoutes {
  std::shared_ptr<FrozenBackbone> backbone;
  std::vector<std::shared_ptr<const ModelRoute>> routes;
};
[[nodiscard]] LoadedRoutes load_job_routes(const JobManifest& manifest, comm::Communicator& comm, bool for_deletion);

struct EvalResult {
  double accuracy = 0;  // the first route's (registry order) that could answer
  std::int64_t records = 0;
  // [{"name", "accuracy", ...the route's eval_details}]: one per model of the job
  nlohmann::json models = nlohmann::json::array();
};

// Accuracy of a trained job's models on `data` (every live record; empty path: the config's
// test_dataset), each through its route's predict, as served.
[[nodiscard]] EvalResult evaluate_job(const std::filesystem::path& job_dir, const std::filesystem::path& data);

}  // namespace lethe::trainer
