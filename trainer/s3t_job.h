// trainer/s3t_job.h — a whole S3T run over ranks: (shard, sequence) jobs spread deterministically,
// the job directory (config copy, backbone copy, checkpoints, manifest with plan state), resume, eval.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/model_config.h"
#include "trainer/s3t_plan.h"

namespace lethe::storage {
class Dataset;  // storage/dataset.h
}  // namespace lethe::storage

namespace lethe::trainer {

// Everything a run needs, resolved from the job config (launch/job_config.h converts).
struct S3TJobSpec {
  std::filesystem::path dataset;
  std::filesystem::path backbone;
  std::filesystem::path job_dir;
  std::filesystem::path config_file;  // copied into the job directory as config.yaml
  std::uint64_t seed = 0;
  std::string device = "cpu";
  int threads = 1;
  ModelConfig model;  // sites = slices; input shape is taken from the dataset
  int epochs = 2;
  std::int64_t batch_size = 128;
  double learning_rate = 1e-3;
  std::int64_t cache_batch_size = 1024;
  int shards = 4;
  int slices = 4;
  int sequences = 4;
  SequenceSelection selection = SequenceSelection::kCyclic;
  std::vector<double> deletion_probabilities;
  int horizon = 1;
  nlohmann::json config;       // canonical config, stored in the manifest
  std::string config_digest;   // recorded in every checkpoint's metadata
};

// Job directory layout (docs: DESIGN.md §3, §6):
//   <job_dir>/config.yaml, config.json   the config as given, and canonical
//   <job_dir>/backbone.h5                 the frozen backbone the run used
//   <job_dir>/checkpoints/shard<k>-seq<b>/ one CheckpointStore series per (shard, sequence);
//                                          version metadata "prefix" = i holds P_i
//   <job_dir>/manifest.json               plan state per shard (s3t_plan JSON) and, per series,
//                                          the committed version and digest of every prefix
[[nodiscard]] std::string series_name(int shard, int sequence);

// The (shard, sequence) jobs of `rank` among `world` ranks: shard-major order cut into contiguous
// blocks, so a rank's sequences of one shard share one activation cache. Results never depend on it.
[[nodiscard]] std::vector<std::pair<int, int>> jobs_for_rank(int shards, int sequences, int rank, int world);

struct S3TRunReport {
  int jobs = 0;           // (shard, sequence) jobs of this rank
  int steps_trained = 0;  // prefix steps trained by this rank
  int steps_resumed = 0;  // prefix steps found committed and skipped (--resume)
  std::int64_t samples = 0;  // training sample passes of this rank
  double train_seconds = 0;
  double cache_seconds = 0;
  double seconds = 0;                // wall time of the whole run, this rank
  std::int64_t total_samples = 0;    // summed over ranks
  nlohmann::json digests;            // {series: [digest of P_1, ..., P_L]}: from the final manifest
};

// Trains every job of this rank. With `resume`, series continue after their last committed prefix
// (verified on load: a corrupt checkpoint is an error naming it, and nothing committed is touched);
// without it, a job directory that already holds a manifest is an error. Collective over `comm`.
S3TRunReport run_s3t_job(const S3TJobSpec& spec, comm::Communicator& comm, bool resume);

// The same run with a caller's bookkeeping (retraining, trainer/s3t_retrain.h) in its manifest.
struct S3TRunOptions {
  bool resume = false;
  // Rank 0 only, on the final manifest just before it is committed: its edits land in the same
  // atomic write. An exception from it fails the run on every rank.
  std::function<void(nlohmann::json&)> before_manifest_commit;
};
S3TRunReport run_s3t_job(const S3TJobSpec& spec, comm::Communicator& comm, const S3TRunOptions& options);

// Rank 0, before training: creates the job directory (config.yaml and config.json, backbone.h5,
// checkpoints/, manifest.json with one "shards" entry per shard, none when `orders` is empty: a job
// without S3T), or with `resume` checks that the one there holds a run of the same config.
void prepare_job_dir(const S3TJobSpec& spec, const ModelConfig& model, const std::vector<SliceOrder>& orders, bool resume);

// Every rank learns whether any rank failed (`error`: this rank's message, empty for none) and
// throws if so, so that no rank waits in a collective for a peer that has already given up.
void agree_on_failure(comm::Communicator& comm, const std::string& error, const std::string& what);

struct EvalResult {
  double accuracy = 0;  // the S3T ensemble's when the job has S3T, else the noisy-GD model's
  std::int64_t records = 0;
  // [{"name": "s3t", "accuracy", "live_shards", "shards": [{"shard", "sequence", "depth"}]},
  //  {"name": "noisy_gd", "accuracy", "version", ...}]: the models the job has
  nlohmann::json models;
};

// Accuracy of a trained job's models on `data` (every live record; empty path: the dataset named
// by the config's test_dataset): the S3T ensemble, using the manifest's plan state to choose each
// shard's prefix, and the noisy-GD model version the manifest names (trainer/noisy_gd_job.h).
[[nodiscard]] EvalResult evaluate_job(const std::filesystem::path& job_dir, const std::filesystem::path& data);

// Fails with a clear message when `device` is "cuda" and libtorch sees no CUDA device.
void check_device(const std::string& device, const std::filesystem::path& config_file);

// The job's dataset, opened read-only after check_device(): an error naming the config's `dataset:`
// key when the file does not exist.
[[nodiscard]] storage::Dataset open_job_dataset(const S3TJobSpec& spec);

// What check_job_inputs found: the dataset's records and the model's input shape.
struct JobInputsReport {
  std::uint64_t records = 0;          // rows, tombstoned included
  std::uint64_t live_records = 0;
  std::uint64_t trainable_records = 0;  // live and not public: what S3T and noisy GD train on
  int fewest_slice_records = 0;       // S3T: the smallest (shard, slice) of the assignment; 0 without S3T
  ModelConfig model;                  // with the dataset's input shape
};

// Everything a run checks before it trains, without writing anything: the device, the dataset
// (exists, is a Lethe dataset, and with `s3t` has a record in every shard x slice) and the backbone
// (exists and matches the model). Throws the same errors run_s3t_job / run_noisy_gd_job would.
[[nodiscard]] JobInputsReport check_job_inputs(const S3TJobSpec& spec, bool s3t);

}  // namespace lethe::trainer
