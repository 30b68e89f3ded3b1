// trainer/noisy_gd_job.h — a job's noisy-GD model (DESIGN.md §4) on the frozen backbone's normalized
// features: its records over the ranks, training, the "noisy-gd" checkpoint series and manifest section.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "storage/checkpoint_store.h"
#include "trainer/noisy_gd.h"
#include "trainer/s3t_job.h"

namespace lethe::trainer {

class LetheModel;

// The checkpoint series (under <job_dir>/checkpoints) that holds every version of a job's model.
inline constexpr const char* kNoisyGdSeries = "noisy-gd";

// The noisy-GD settings of a job (launch/job_config.h converts the config's noisy_gd section).
struct NoisyGdJobSpec {
  NoisyGdParams params;             // lambda, eta, sigma, clip
  std::int64_t train_steps = 200;   // steps of training from scratch
  double target_epsilon = 1.0;      // what each deletion certifies
  std::optional<double> delta;      // default 1/n
};

// This rank's share of the records a job's noisy-GD model trains on: the dataset's live non-public
// rows, every world-th one starting at rank; normalized backbone features, labels, and the record
// ids aligned with rows. Collective-free (each rank reads and computes its own share).
struct NoisyGdShare {
  LocalData data;
  std::vector<std::string> ids;
};
[[nodiscard]] NoisyGdShare load_noisy_gd_share(const std::filesystem::path& job_dir, comm::Communicator& comm);

// The model version the manifest names (NoisyGdModel::load semantics), bound to comm. Throws when
// the job has no noisy-GD model or the checkpoint fails verification.
[[nodiscard]] NoisyGdModel load_job_noisy_gd_model(const std::filesystem::path& job_dir, comm::Communicator& comm);

// Rank 0: commits `model` as a new version of the series and updates manifest["noisy_gd"] in the
// given JSON (the caller writes the manifest, because a deletion updates S3T and noisy GD in one
// manifest write).
storage::CheckpointInfo commit_noisy_gd_model(const NoisyGdModel& model, const std::filesystem::path& job_dir,
                                              nlohmann::json& manifest);

// What the model sees: `inputs` ([N, C, H, W]) through the frozen backbone with every adapter
// inactive, in batches, then normalize_features(): (N, feature_dim + 1) float64 on the CPU.
[[nodiscard]] at::Tensor noisy_gd_features(LetheModel& backbone, const at::Tensor& inputs, std::int64_t batch_size);

struct NoisyGdRunReport {
  bool resumed = false;           // --resume found the model committed and trained nothing
  std::int64_t records = 0;       // n, over all ranks
  std::int64_t local_records = 0; // this rank's share
  std::int64_t steps = 0;
  double feature_seconds = 0;     // this rank: reading its records and the backbone pass
  double train_seconds = 0;       // the noisy GD steps (collective)
  double seconds = 0;             // the whole run, this rank
  double train_accuracy = 0;      // on the training records, all ranks
  int version = 0;                // committed checkpoint (known on every rank)
  std::string digest;             // its digest (rank 0 only)
};

// Trains the job's noisy-GD model from scratch on every rank's share and commits it (rank 0: the
// series and the manifest section). `job_dir_prepared`: S3T training of the same command created
// the job directory; otherwise it is created here (a job without S3T). With `resume`, a model the
// manifest already names is verified and kept. Collective over `comm`.
NoisyGdRunReport run_noisy_gd_job(const S3TJobSpec& job, const NoisyGdJobSpec& spec, comm::Communicator& comm,
                                  bool resume, bool job_dir_prepared);

// {"name": "noisy_gd", "accuracy", "version", "digest", "trained_records"} of the model the
// manifest names on `inputs`/`labels` (every record given); `backbone` holds the job's backbone.
[[nodiscard]] nlohmann::json evaluate_noisy_gd(const std::filesystem::path& job_dir, const nlohmann::json& manifest,
                                               LetheModel& backbone, const at::Tensor& inputs, const at::Tensor& labels);

}  // namespace lethe::trainer
