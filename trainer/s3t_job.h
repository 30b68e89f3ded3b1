// trainer/s3t_job.h — S3T training over ranks (DESIGN.md §3): (shard, sequence) jobs spread
// deterministically, each trained top-down with its prefix checkpoints committed as it goes; resume;
// the S3T section of the manifest (trainer/s3t_state.h) committed at the end.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"
#include "trainer/job_settings.h"

namespace lethe::storage {
class Dataset;          // storage/dataset.h
class CheckpointStore;  // storage/checkpoint_store.h
}  // namespace lethe::storage

namespace lethe::trainer {

struct PrefixState;       // trainer/s3t_trainer.h
struct PrefixCheckpoint;  // trainer/s3t_state.h
struct S3TSection;        // trainer/s3t_state.h

// The (shard, sequence) jobs of `rank` among `world` ranks: shard-major order cut into contiguous
// blocks, so a rank's sequences of one shard share one activation cache. Results never depend on it.
[[nodiscard]] std::vector<std::pair<int, int>> jobs_for_rank(int shards, int sequences, int rank, int world);

// Non-public live records per shard, and each one's slice (the dataset's keyed hash), minus
// `exclude` rows. Throws TrainerError (kInvalidInput) naming s3t.slices when a (shard, slice) is empty.
struct ShardRecords {
  std::vector<std::uint64_t> rows;
  std::vector<int> slice_of_record;
};
[[nodiscard]] std::vector<ShardRecords> assign_records(const storage::Dataset& dataset, const JobSettings& settings,
                                                      std::span<const std::uint64_t> exclude = {});

// Loads P_i of `series` as the manifest records it; TrainerError (kMismatch) when the checkpoint's
// digest is not the recorded one (it was replaced), StorageError when it fails verification.
[[nodiscard]] PrefixState load_prefix(const storage::CheckpointStore& store, const std::string& series,
                                      const PrefixCheckpoint& expected);

struct S3TRunReport {
  int jobs = 0;           // (shard, sequence) jobs of this rank
  int steps_trained = 0;  // prefix steps trained by this rank
  int steps_resumed = 0;  // prefix steps found committed and skipped (resume)
  std::int64_t samples = 0;  // training sample passes of this rank
  double train_seconds = 0;
  double cache_seconds = 0;
  double seconds = 0;                // wall time of the whole run, this rank
  std::int64_t total_samples = 0;    // summed over ranks
  nlohmann::json digests;            // {series: [digest of P_1, ..., P_L]}: from the final manifest
};

struct S3TRunOptions {
  // Series continue after their last committed prefix (verified on load: a corrupt checkpoint is an
  // error naming it, and nothing committed is touched); without it, existing series are refused.
  bool resume = false;
  // A retrain: train only these (shard, sequence) pairs, into the series `retrain_series` names
  // (new series: what a running service serves is never written), on the live records but
  // `exclude_rows`; the manifest is not committed: `retrained` (rank 0) holds the S3T section of
  // the retrain's snapshot on entry and the section the run reached on return.
  std::vector<std::pair<int, int>> only;
  std::function<std::string(int shard, int sequence)> retrain_series;
  std::vector<std::uint64_t> exclude_rows;
  S3TSection* retrained = nullptr;
};

// Collective. Trains every job of this rank into settings.job_dir, which prepare_job_dir
// (trainer/job.h) created; adds the S3T section to the manifest first when it has none.
S3TRunReport run_s3t_job(const JobSettings& settings, comm::Communicator& comm, const S3TRunOptions& options);

}  // namespace lethe::trainer
