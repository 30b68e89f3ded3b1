// deletion/job_router.h — a trained job's models as the coordinator holds them, and one batch of
// deletions applied through each model's route (DESIGN.md §1): S3T slice deactivation, noisy-GD K_U steps.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "deletion/record_resolution.h"

namespace lethe::deletion {

// The requested model cannot answer now (the S3T ensemble has no live shard); HTTP 503.
class ModelUnavailable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One checkpoint version a batch invalidated: purged once the batch's manifest is committed.
struct PurgeTarget {
  std::string series;
  int version = 0;
};

// What a batch did to the models, as committed in the manifest ("last_batch") and reported in receipts.
struct BatchOutcome {
  std::vector<std::string> request_ids;
  std::int64_t records_deleted = 0;   // records the models forgot
  std::int64_t model_version = 0;     // the job's model version after the batch
  nlohmann::json models = nlohmann::json::array();  // one receipt part per model (route and effect)
  std::vector<PurgeTarget> purge;
};
[[nodiscard]] nlohmann::json to_json(const BatchOutcome& outcome);
[[nodiscard]] BatchOutcome batch_outcome_from_json(const nlohmann::json& json);

// GET /v1/models of a job from its manifest alone (no model is loaded, so `lethe status` can call it
// on a served job): per model its version; S3T's live depth per shard, served sequences, retrain_pending;
// noisy GD's version, records and steps taken.
[[nodiscard]] nlohmann::json models_json(const std::filesystem::path& job_dir, const nlohmann::json& manifest);

class JobRouter {
 public:
  // Collective over `comm`: every rank loads the noisy-GD model and its share of the training
  // records (when the job has one); rank 0 also loads the manifest, the S3T plans and the served
  // prefixes. Throws naming the job directory when it is not a trained job.
  JobRouter(std::filesystem::path job_dir, comm::Communicator& comm);
  ~JobRouter();
  JobRouter(const JobRouter&) = delete;
  JobRouter& operator=(const JobRouter&) = delete;

  [[nodiscard]] const std::filesystem::path& job_dir() const { return job_dir_; }
  [[nodiscard]] std::filesystem::path dataset_path() const;  // rank 0
  [[nodiscard]] bool has_s3t() const;
  [[nodiscard]] bool has_noisy_gd() const;

  // Rank 0: the request's records resolved against the dataset (opened read-only for the call).
  [[nodiscard]] std::vector<ResolvedRecord> resolve(const DeletionRequest& request) const;

  // Collective. Rank 0 passes the batch's records to delete (outcome kDelete) and its request ids;
  // other ranks pass empty lists and learn the ids by broadcast. Truncates the S3T sequences and
  // switches serving, runs the noisy-GD deletion (all ranks), and commits the manifest with the
  // outcome as "last_batch" (the commit point of the batch; rank 0). Checkpoints to purge are
  // listed, not purged: purge() does it once the caller has recorded the outcome.
  BatchOutcome apply_batch(const std::vector<ResolvedRecord>& records, const std::vector<std::string>& request_ids);

  // The manifest's "last_batch" when it lists `request_id`: that batch was committed (a crash
  // came before its requests were marked applied). Rank 0.
  [[nodiscard]] std::optional<BatchOutcome> committed_batch_of(const std::string& request_id) const;

  // Collective. Rank 0 passes the ids of records a committed batch deleted whose removal from the
  // noisy-GD shares did not survive a restart (the shares are reloaded from the dataset, where they
  // are erased only after the commit): every rank drops them from its share, running no steps.
  void forget_in_shares(const std::vector<std::string>& ids);

  // Rank 0. Overwrites the records' feature bytes in the dataset and tombstones them (idempotent);
  // returns how many were erased now.
  std::int64_t erase(const std::vector<std::string>& ids);

  // Rank 0. Purges the listed checkpoint versions (idempotent: already purged ones are skipped).
  void purge(const std::vector<PurgeTarget>& targets) const;

  // Rank 0, any thread: GET /v1/models.
  [[nodiscard]] nlohmann::json models_json() const;
  // Rank 0, any thread: class probabilities of `inputs` (rows of the dataset's feature values,
  // e.g. pixels 0..255) from `model` ("s3t" or "noisy_gd"; empty: S3T when the job has it).
  // Throws RequestError naming the field for inputs of the wrong shape or an unknown model, and
  // ModelUnavailable for "s3t" when every shard is dead (until `lethe retrain`).
  [[nodiscard]] nlohmann::json predict(const nlohmann::json& body) const;
  // Rank 0: per shard the live depth (0 when dead), for /metrics.
  [[nodiscard]] std::vector<int> live_depths() const;
  [[nodiscard]] std::int64_t model_version() const;

 private:
  struct State;
  // The job's dataset, opened writable once (rank 0).
  [[nodiscard]] storage::Dataset& dataset() const;

  std::filesystem::path job_dir_;
  comm::Communicator* comm_;
  std::unique_ptr<State> state_;
  mutable std::mutex mutex_;  // serving state: apply_batch swaps it, predict and models_json read it
};

}  // namespace lethe::deletion
