#include "trainer/job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "comm/agree.h"
#include "comm/in_process.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "storage/error.h"
#include "storage/hashing.h"
#include "storage/job_lock.h"
#include "trainer/compute_threads.h"
#include "trainer/ensemble.h"
#include "trainer/error.h"
#include "trainer/frozen_backbone.h"
#include "trainer/model.h"
#include "trainer/model_route.h"
#include "trainer/pretrain.h"
#include "trainer/routes.h"
#include "trainer/trunk.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void copy_durably(const fs::path& from, const fs::path& to) {
  const auto tmp = storage::temp_path_for(to);
  std::error_code error;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, error);
  if (error) {
    std::error_code ignored;
    fs::remove(tmp, ignored);  // a partial copy (a full disk) must not stay behind, taking the space
    throw storage::StorageError(error == std::errc::no_space_on_device ? storage::StorageErrorKind::kNoSpace
                                                                       : storage::StorageErrorKind::kIo,
                                "cannot copy '" + from.string() + "' to '" + tmp.string() + "': " + error.message() +
                                    "; free space or fix permissions and retry");
  }
  storage::commit_file(tmp, to);
}

}  // namespace

fs::path job_config_yaml_path(const fs::path& job_dir) { return job_dir / "config.yaml"; }
fs::path job_config_json_path(const fs::path& job_dir) { return job_dir / "config.json"; }

void check_device(const std::string& device, const fs::path& config_file) {
  if (device == "cpu") return;
  if (device != "cuda") {
    throw TrainerError(ErrorKind::kInvalidInput, config_file.string() + ": device: '" + device + "'; use cpu or cuda");
  }
  if (!torch::cuda::is_available()) {
    throw TrainerError(ErrorKind::kInvalidInput,
                       config_file.string() +
                           ": device: cuda was requested but this libtorch sees no CUDA device (Debian's libtorch "
                           "is CPU-only; build against a CUDA libtorch on a GPU machine), or set device: cpu");
  }
}

storage::Dataset open_job_dataset(const JobSettings& settings) {
  check_device(settings.device, settings.source);
  if (!fs::exists(settings.dataset)) {
    throw TrainerError(ErrorKind::kNotFound, settings.source.string() + ": dataset: " + settings.dataset.string() +
                                                 " does not exist; ingest it first (`lethe ingest ...`) or fix the path");
  }
  return storage::Dataset::open(settings.dataset);
}

ModelConfig job_model_config(const JobSettings& settings, const storage::Dataset& dataset) {
  ModelConfig model = settings.model;
  set_input_shape(model, dataset.layout());
  if (model.trunk) {
    // Probed on the CPU: the shapes do not depend on the device.
    const auto trunk = Trunk::load(settings.trunk, "cpu", model.trunk->sha256);
    const auto& feature_shape = dataset.layout().feature_shape;
    model.trunk->input_shape.assign(feature_shape.begin(), feature_shape.end());
    model.trunk->output_shape = probe_trunk_output(*trunk, model.trunk->input_shape);
  }
  try {
    if (model.trunk) validate_trunk(model, "model.trunk " + settings.trunk.string());
    validate(model);
  } catch (const std::invalid_argument& e) {
    throw TrainerError(ErrorKind::kInvalidInput, settings.source.string() + ": " + e.what());
  }
  return model;
}

std::shared_ptr<const Trunk> load_job_trunk(const JobSettings& settings, const ModelConfig& model) {
  if (!model.trunk) return nullptr;
  return Trunk::load(settings.trunk, settings.device, model.trunk->sha256);
}

JobInputsReport check_job_inputs(const JobSettings& settings) {
  const auto dataset = open_job_dataset(settings);
  JobInputsReport report;
  report.records = dataset.size();
  report.live_records = dataset.size() - dataset.tombstoned_count();
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;
  report.trainable_records = dataset.select(filter).size();
  if (report.trainable_records == 0) {
    throw TrainerError(ErrorKind::kInvalidInput, settings.source.string() + ": dataset: " + dataset.path().string() +
                                                     " has no live non-public records to train on; ingest with a "
                                                     "--public-fraction below 1");
  }
  report.model = job_model_config(settings, dataset);
  for (const auto& kind : route_kinds()) {
    if (!kind.configured(settings)) continue;
    report.models.emplace_back(kind.name);
    report.routes[std::string(kind.name)] = kind.check_inputs(settings, dataset);
  }
  LetheModel prototype(report.model, 0);
  load_backbone(prototype, settings.backbone);
  return report;
}

void prepare_job_dir(const JobSettings& settings, const storage::Dataset& dataset, bool resume, comm::Communicator& comm) {
  comm::on_root(comm, "preparing the job directory", [&] {
    const auto& dir = settings.job_dir;
    const auto digest = config_digest(settings);
    if (fs::exists(job_manifest_path(dir))) {
      if (!resume) {
        throw TrainerError(ErrorKind::kInvalidInput,
                           "job directory " + dir.string() +
                               " already holds a run (manifest.json); pass --resume to continue it or choose another job_dir");
      }
      const auto existing = read_job_manifest(dir);
      if (existing.config_digest != digest) {
        throw TrainerError(ErrorKind::kMismatch, "--resume: the config differs from the run in " + dir.string() + " (digest " +
                                                     existing.config_digest + " there, " + digest +
                                                     " now); resume with the same config or start a new job_dir");
      }
      return;
    }
    JobManifest manifest;
    manifest.dir = dir;
    fs::create_directories(manifest.checkpoints_path());
    if (!settings.source.empty() && fs::is_regular_file(settings.source)) copy_durably(settings.source, job_config_yaml_path(dir));
    storage::write_file_durably(job_config_json_path(dir), to_json(settings, dir).dump(2) + "\n");
    copy_durably(settings.backbone, manifest.backbone_path());
    if (!settings.trunk.empty()) {
      manifest.trunk_file = "trunk.pt";
      copy_durably(settings.trunk, manifest.trunk_path());
    }
    manifest.status = JobStatus::kTraining;
    manifest.config = settings;
    manifest.config_digest = digest;
    manifest.dataset = {fs::absolute(dataset.path()).lexically_normal(), dataset.uuid(), dataset.content_digest()};
    manifest.backbone_digest = storage::sha256_file(manifest.backbone_path());
    manifest.model = job_model_config(settings, dataset);
    if (manifest.model.trunk && storage::sha256_file(manifest.trunk_path()) != manifest.model.trunk->sha256) {
      throw TrainerError(ErrorKind::kMismatch, "model.trunk: " + settings.trunk.string() +
                                                   " changed while it was copied into the job; run again");
    }
    commit_job_manifest(manifest);
  });
}

json train_job(const JobSettings& settings, comm::Communicator& comm, bool resume) {
  {
    const auto dataset = open_job_dataset(settings);
    prepare_job_dir(settings, dataset, resume, comm);
  }
  // The dataset records that this job trains on it, so that `lethe erase` and `lethe compact`
  // refuse it (storage/dataset.h). In place, while no rank has it open: before any rank trains.
  comm::on_root(comm, "claiming the dataset " + settings.dataset.string() + " for the job",
                [&] { storage::add_dataset_job(settings.dataset, settings.job_dir); });
  json out = {{"models", json::array()}};
  for (const auto& kind : route_kinds()) {
    if (!kind.configured(settings)) continue;
    out[std::string(kind.name)] = kind.train(settings, comm, resume);
    out["models"].push_back(kind.name);
  }
  comm::on_root(comm, "marking the job trained", [&] {
    auto manifest = read_job_manifest(settings.job_dir);
    if (manifest.status == JobStatus::kTrained) return;
    manifest.status = JobStatus::kTrained;
    commit_job_manifest(manifest);
  });
  return out;
}

namespace {

// A file the job keeps its own copy of (`noun`: backbone, trunk) must be there with the SHA-256
// the manifest records; `remedy` says what a different one needs.
void verify_job_copy(const JobManifest& manifest, const fs::path& file, const std::string& expected_sha256,
                     const std::string& noun, const std::string& remedy) {
  if (!fs::exists(file)) {
    throw TrainerError(ErrorKind::kMismatch, file.string() + " is missing; the job's frozen " + noun +
                                                 " must stay in its directory: restore the job directory from a backup");
  }
  const auto actual = storage::sha256_file(file);
  if (actual != expected_sha256) {
    throw TrainerError(ErrorKind::kMismatch,
                       file.string() + " is not the " + noun + " job " + manifest.dir.string() + " was trained with (SHA-256 " +
                           actual.substr(0, 16) + "…, the manifest records " + expected_sha256.substr(0, 16) +
                           "…): it was replaced or damaged. Restore it from a backup; " + remedy);
  }
}

}  // namespace

void verify_backbone(const JobManifest& manifest) {
  verify_job_copy(manifest, manifest.backbone_path(), manifest.backbone_digest, "backbone",
                  "a different backbone needs a new job (`lethe train`)");
}

void verify_trunk(const JobManifest& manifest) {
  if (!manifest.model.trunk) return;
  verify_job_copy(manifest, manifest.trunk_path(), manifest.model.trunk->sha256, "trunk",
                  "a different trunk needs a new backbone (`lethe pretrain`) and a new job (`lethe train`)");
}

void verify_config_json(const JobManifest& manifest) {
  const auto file = job_config_json_path(manifest.dir);
  if (!fs::exists(file)) {
    throw TrainerError(ErrorKind::kNotFound, manifest.dir.string() + " holds no config.json; pass a job directory written "
                                                                     "by `lethe train`, or restore it from a backup");
  }
  json text;
  try {
    text = json::parse(std::ifstream(file));
  } catch (const json::exception& e) {
    throw TrainerError(ErrorKind::kMismatch, file.string() + " is not valid JSON (" + e.what() + "); restore it from a backup");
  }
  const auto digest = config_digest(job_settings_from_json(text, manifest.dir, file.string()));
  if (digest != manifest.config_digest) {
    throw TrainerError(ErrorKind::kMismatch,
                       file.string() + ": config_digest " + digest + " differs from " + manifest.config_digest +
                           ", the digest the job was trained with (manifest.json): config.json was edited. Retraining "
                           "would not reproduce the run; restore config.json, or train the job anew");
  }
}

void verify_dataset(const JobManifest& manifest, const storage::Dataset& dataset) {
  const auto& expected = manifest.dataset;
  const auto where = dataset.path().string();
  if (dataset.uuid() != expected.uuid) {
    throw TrainerError(ErrorKind::kMismatch,
                       where + " is not the dataset job " + manifest.dir.string() + " was trained on (uuid '" + dataset.uuid() +
                           "', the job records '" + expected.uuid +
                           "'): it was ingested again or replaced, which can bring erased records back. Restore the "
                           "job's own dataset (docs/OPERATIONS.md, backups)");
  }
  if (dataset.content_digest() == expected.digest) return;
  // A batch committed but not yet erased (a crash came between): the dataset lags by its rows.
  if (manifest.last_batch && dataset.content_digest(manifest.last_batch->erase_rows) == expected.digest) return;
  throw TrainerError(ErrorKind::kMismatch,
                     where + ": its records or tombstones differ from what job " + manifest.dir.string() +
                         " recorded (content digest " + dataset.content_digest().substr(0, 16) + "…, the job expects " +
                         expected.digest.substr(0, 16) +
                         "…): it was restored from an older copy, compacted, or had records erased outside the job "
                         "(erase through a deletion request, never `lethe erase`). Restore the dataset the job last "
                         "wrote (docs/OPERATIONS.md)");
}

JobManifest open_trained_job(const fs::path& job_dir, comm::Communicator& comm) {
  std::string text;
  comm::on_root(comm, "opening the job " + job_dir.string(), [&] {
    auto manifest = read_job_manifest(job_dir);
    if (manifest.status != JobStatus::kTrained) {
      throw TrainerError(ErrorKind::kInvalidInput, manifest.path().string() + ": the job's status is '" +
                                                       std::string(to_string(manifest.status)) +
                                                       "', not 'trained'; finish it with `lethe train --resume`");
    }
    verify_backbone(manifest);
    verify_trunk(manifest);
    if (!fs::exists(manifest.dataset.path)) {
      throw TrainerError(ErrorKind::kMismatch, manifest.path().string() + ": the job's dataset " +
                                                   manifest.dataset.path.string() +
                                                   " does not exist; a job and its dataset move together (the manifest "
                                                   "stores the dataset's path relative to the job directory)");
    }
    // A writer serving the job (a retrain opens it beside `lethe serve`) may be erasing a batch's
    // rows as we read them: a mismatch then passes within moments, so it is retried while one holds
    // the job (a dataset that really changed underneath still fails, after the retries).
    for (int attempt = 1;; ++attempt) {
      try {
        verify_dataset(manifest, storage::Dataset::open(manifest.dataset.path));
        break;
      } catch (const TrainerError& e) {
        constexpr int kAttempts = 20;
        if (e.kind() != ErrorKind::kMismatch || attempt == kAttempts ||
            !storage::JobLock::holder(job_dir, storage::JobLock::Kind::kWriter)) {
          throw;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      manifest = read_job_manifest(job_dir);
    }
    text = encode_job_manifest(manifest).dump();
  });
  text = comm::broadcast_string(comm, text);
  return decode_job_manifest(json::parse(text), job_dir);
}

LoadedRoutes load_job_routes(const JobManifest& manifest, comm::Communicator& comm, bool for_deletion) {
  set_compute_threads(manifest.config.threads);
  LoadedRoutes loaded;
  std::optional<storage::Dataset> dataset;
  comm::on_every_rank(comm, "loading the job's backbone and dataset", [&] {
    loaded.backbone = std::make_shared<FrozenBackbone>(manifest.model, manifest.backbone_path(), manifest.trunk_path(),
                                                       manifest.config.device);
    dataset.emplace(storage::Dataset::open(manifest.dataset.path));
  });
  loaded.routes = load_routes(RouteContext{manifest, comm, loaded.backbone, *dataset, for_deletion});
  return loaded;
}

EvalResult evaluate_job(const fs::path& job_dir, const fs::path& data) {
  auto world = comm::make_in_process_world(1);
  auto& comm = *world.front();
  const auto manifest = open_trained_job(job_dir, comm);
  auto data_path = data.empty() ? manifest.config.test_dataset : data;
  if (data_path.empty()) {
    throw TrainerError(ErrorKind::kInvalidInput, "no evaluation data: pass --data FILE or set test_dataset in the job config");
  }
  const auto loaded = load_job_routes(manifest, comm, /*for_deletion=*/false);
  const auto dataset = storage::Dataset::open(data_path);
  const auto records = read_records(dataset, dataset.select(storage::RecordFilter{}), manifest.model);
  EvalResult result;
  result.records = records.labels.size(0);
  bool first = true;
  for (const auto& route : loaded.routes) {
    json entry = {{"name", route->name()}};
    try {
      const double value = accuracy(route->predict(records.inputs), records.labels);
      entry["accuracy"] = value;
      if (first) result.accuracy = value;
      first = false;
    } catch (const TrainerError& e) {
      if (e.kind() != ErrorKind::kUnavailable) throw;
      entry["accuracy"] = nullptr;
      entry["unavailable"] = e.what();
    }
    entry.update(route->eval_details());
    result.models.push_back(std::move(entry));
  }
  return result;
}

}  // namespace lethe::trainer
