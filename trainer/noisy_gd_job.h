// trainer/noisy_gd_job.h — a job's noisy-GD model (DESIGN.md §4) on the frozen backbone's normalized
// features: its records over the ranks, training, the "noisy-gd" checkpoint series and its typed
// section of the manifest (routes.noisy_gd).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "storage/checkpoint_store.h"
#include "trainer/job_manifest.h"
#include "trainer/job_settings.h"
#include "trainer/noisy_gd.h"

namespace lethe::storage {
class Dataset;  // storage/dataset.h
}  // namespace lethe::storage

namespace lethe::trainer {

class FrozenBackbone;
class LetheModel;

inline constexpr const char* kNoisyGdRouteName = "noisy_gd";
// The checkpoint series that holds every version of a job's model.
inline constexpr const char* kNoisyGdSeries = "noisy-gd";

// The model's section of the manifest: the version it serves and what it certifies.
struct NoisyGdSection {
  std::string series = kNoisyGdSeries;
  int version = 0;
  std::string digest;
  std::int64_t records = 0;      // n it was last trained or unlearned on
  std::int64_t steps_taken = 0;  // noisy steps so far (the noise stream's position)
  std::int64_t train_steps = 0;
  double target_epsilon = 0;
  double delta = 0;
  double dp_epsilon = 0;         // DP of the remaining records
  bool certified = true;
  NoisyGdParams params;
};
[[nodiscard]] nlohmann::json encode_noisy_gd_section(const NoisyGdSection& section);
[[nodiscard]] NoisyGdSection decode_noisy_gd_section(const nlohmann::json& json, const std::string& origin);

// The model's configuration for a job: the settings, the feature width of the backbone (plus the
// bias input) and the noise stream's seed.
[[nodiscard]] NoisyGdConfig noisy_gd_config(const JobSettings& settings, const ModelConfig& model);

// What the model sees: `inputs` ([N, C, H, W]) through the frozen backbone with every adapter
// inactive, in batches, centred by the backbone's feature mean (computed on public records), then
// normalize_features(): (N, feature_dim + 1) float64 on the CPU.
[[nodiscard]] at::Tensor noisy_gd_features(LetheModel& backbone, const at::Tensor& inputs, std::int64_t batch_size);

// Records are grouped in blocks of this many dataset rows. Rank r of N holds the blocks b with
// b mod N == r and computes each block's features in one batch: a row's features, and so the
// model, are then the same bits for any number of ranks (an optimized BLAS rounds a row
// differently in batches of different sizes).
inline constexpr std::uint64_t kNoisyGdBlockRows = 256;
static_assert(kNoisyGdBlockRows == static_cast<std::uint64_t>(kNoisyGdTileRows),
              "a block is one gradient tile: one GEMM of exactly its rows");

// LocalData::block_ends of records at dataset rows `rows` (ascending): a block ends where the
// next row lies in another block of kNoisyGdBlockRows dataset rows (a block with deleted records
// is shorter; one without records is absent).
[[nodiscard]] std::vector<std::int64_t> noisy_gd_block_ends(std::span<const std::uint64_t> rows);

// This rank's share of the records the model trains on: the dataset's live non-public rows minus
// `exclude` (rows a committed batch deleted, not yet erased), in this rank's blocks; normalized
// backbone features, labels and block ends, and the record ids and rows aligned with them.
// Collective-free.
struct NoisyGdShare {
  LocalData data;
  std::vector<std::string> ids;
  std::vector<std::uint64_t> rows;
};
[[nodiscard]] NoisyGdShare load_noisy_gd_share(const storage::Dataset& dataset, FrozenBackbone& backbone,
                                               std::span<const std::uint64_t> exclude, comm::Communicator& comm);
// The share without the records whose id is in `deleted` (sorted), its block ends recomputed.
[[nodiscard]] NoisyGdShare without(const NoisyGdShare& share, const std::vector<std::string>& deleted);

// The model version the manifest's section names, bound to `comm`; TrainerError (kNotFound) when
// the job has no noisy-GD model, (kMismatch) when the checkpoint is not the one the manifest records.
[[nodiscard]] NoisyGdModel load_noisy_gd_model(const JobManifest& manifest, comm::Communicator& comm);

// Rank 0: commits `model` as a new version of the job's series and returns the section naming it.
[[nodiscard]] NoisyGdSection commit_noisy_gd_model(const NoisyGdModel& model, const JobManifest& manifest);

struct NoisyGdRunReport {
  bool resumed = false;           // resume found the model committed and trained nothing
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
[[nodiscard]] nlohmann::json to_json(const NoisyGdRunReport& report);

// Collective. Trains the model from scratch on every rank's share into settings.job_dir (prepared
// by prepare_job_dir) and commits it (rank 0: the series and the manifest section). With `resume`,
// a model the manifest already names is verified and kept.
NoisyGdRunReport run_noisy_gd_job(const JobSettings& settings, comm::Communicator& comm, bool resume);

}  // namespace lethe::trainer
