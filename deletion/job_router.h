// deletion/job_router.h — a trained job's models as the coordinator holds them: the routes the job
// has (trainer/routes.h: the router names none), one committed snapshot served at a time, and one
// batch of deletions applied through every route, all or nothing (DESIGN.md §1).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "deletion/record_resolution.h"
#include "trainer/job_manifest.h"
#include "trainer/job_retrain.h"
#include "storage/dataset.h"
#include "trainer/model_route.h"

namespace lethe::deletion {

// What a batch did to the models: committed in the manifest (its last_batch) and reported in receipts.
using BatchOutcome = trainer::BatchRecord;
using trainer::PurgeTarget;

// GET /v1/models of a job from its manifest alone (no model is loaded, so `lethe status` can call it
// on a served job): the job's model version and each route's description.
[[nodiscard]] nlohmann::json models_json(const trainer::JobManifest& manifest);

// Why `value` cannot be a feature value of a dataset of `type`, or "" when it can: uint8 data
// (pixels) are 0 to 255, float32 data finite and within float32's range. Predictions refuse the
// others (a model fed 1e300 answers NaN).
[[nodiscard]] std::string feature_value_problem(double value, storage::FeatureType type);

class JobRouter {
 public:
  // Collective over `comm`: rank 0 opens and verifies the job (trainer/job.h open_trained_job);
  // every rank loads the routes, with what deletions need. Throws naming the job directory when it
  // is not a trained job or its files do not match its manifest.
  JobRouter(std::filesystem::path job_dir, comm::Communicator& comm);
  ~JobRouter();
  JobRouter(const JobRouter&) = delete;
  JobRouter& operator=(const JobRouter&) = delete;

  [[nodiscard]] const std::filesystem::path& job_dir() const { return job_dir_; }
  [[nodiscard]] const std::filesystem::path& dataset_path() const;

  // Rank 0: the request's records resolved against the job's dataset.
  [[nodiscard]] std::vector<ResolvedRecord> resolve(const DeletionRequest& request) const;

  // Collective. Rank 0 passes the batch's records (those with outcome kDelete are deleted) and its
  // request ids; other ranks pass empty lists. Every route prepares its change on copies; rank 0
  // commits the manifest with every route's new section and the batch as last_batch (the batch's
  // commit point); then every rank swaps the new routes in. A failure anywhere leaves memory and
  // disk as they were (files a route wrote are discarded), so a retry is exact. Checkpoints to
  // purge are listed, not purged: purge() does it once the caller has recorded the outcome.
  // `phases` (rank 0, optional) receives each route's prepare time ("route:<name>") and the
  // manifest commit's ("commit"), in seconds.
  BatchOutcome apply_batch(const std::vector<ResolvedRecord>& records, const std::vector<std::string>& request_ids,
                           std::vector<std::pair<std::string, double>>* phases = nullptr);

  // Collective. Rank 0 passes a trained retrain to adopt (trainer/job_retrain.h; other ranks pass
  // nullptr): the retrained routes are loaded from the planned manifest, rank 0 commits it (the
  // swap's commit point), every rank swaps the new routes in, and rank 0 purges what the old models
  // leave behind. On failure nothing changes. Returns the new model version (rank 0).
  std::int64_t adopt_retrain(const trainer::RetrainRun* run);
  // Rank 0: the trained retrain waiting to be adopted, if any; first finishes an adoption whose
  // purge failed (trainer::finish_adoption).
  [[nodiscard]] std::optional<trainer::RetrainRun> pending_retrain() const;
  // Rank 0: the job's retrains in progress and the last one (trainer::describe_retrains).
  [[nodiscard]] nlohmann::json retrains() const;
  // Rank 0: what a retrain would redo now, per route (for a retrain policy).
  [[nodiscard]] std::vector<trainer::RetrainNeed> retrain_needs() const;

  // The manifest's last_batch when it lists `request_id`: that batch was committed (a crash came
  // before its requests were completed). Rank 0.
  [[nodiscard]] std::optional<BatchOutcome> committed_batch_of(const std::string& request_id) const;

  // Rank 0. Overwrites the records' feature bytes in the dataset and tombstones them (idempotent);
  // returns how many were erased now.
  std::int64_t erase(const std::vector<std::string>& ids);
  // Rank 0. Purges the listed checkpoint versions (idempotent: already purged ones are skipped).
  void purge(const std::vector<PurgeTarget>& targets) const;

  // Rank 0, any thread: GET /v1/models of the snapshot served now.
  [[nodiscard]] nlohmann::json models_json() const;
  // Rank 0, any thread: class probabilities of `body.inputs` (rows of the dataset's feature values,
  // e.g. pixels 0..255) from `body.model` (a route name; absent: the job's first). Throws
  // RequestError naming the field for bad input ("inputs[0][17]" for a value feature_value_problem
  // refuses) or an unknown model, and trainer::TrainerError (kUnavailable) when the model cannot
  // answer now.
  [[nodiscard]] nlohmann::json predict(const nlohmann::json& body) const;

  // Rank 0, any thread: the same on raw rows. `values`: [N, values per record] in the dataset's
  // units (any numeric dtype, CPU); `model`: a route name, or empty for the job's first.
  struct Prediction {
    std::string model;
    std::int64_t model_version = 0;
    at::Tensor probabilities;  // [N, classes] float32
  };
  [[nodiscard]] Prediction predict_rows(const std::string& model, const at::Tensor& values) const;
  // Values per record (the dataset's feature shape, flattened) and the dataset's feature type.
  [[nodiscard]] std::int64_t values_per_record() const;
  [[nodiscard]] storage::FeatureType feature_type() const;
  // Rank 0: every route's facts about one deleted record, added to its receipt entry.
  void describe_record(const std::string& id, nlohmann::json& entry) const;
  // Rank 0: every route's gauges, for /metrics.
  [[nodiscard]] std::vector<trainer::Gauge> gauges() const;
  [[nodiscard]] std::int64_t model_version() const;
  // Rank 0: the job's settings as trained (the manifest's).
  [[nodiscard]] trainer::JobSettings settings() const;

 private:
  struct Snapshot;
  // The committed snapshot served now; predictions hold it while they run, a batch replaces it.
  [[nodiscard]] std::shared_ptr<const Snapshot> current() const;
  // The job's dataset, opened writable once (rank 0): opening indexes every id, too slow per batch.
  [[nodiscard]] storage::Dataset& dataset() const;

  std::filesystem::path job_dir_;
  comm::Communicator* comm_;
  std::shared_ptr<const Snapshot> snapshot_;
  std::shared_ptr<trainer::FrozenBackbone> backbone_;  // shared by the routes; reloading one needs it
  // Rank 0's worker thread: an adoption committed whose purge and record failed (retried).
  mutable bool unfinished_adoption_ = false;
  mutable std::mutex snapshot_mutex_;
  struct DatasetHolder;
  std::unique_ptr<DatasetHolder> dataset_;
};

}  // namespace lethe::deletion
