// trainer/s3t_retrain.h — `lethe retrain` (DESIGN.md §3): restores every truncated S3T sequence to full
// depth on the dataset's current live records, continuing from its surviving prefix, under the job lock.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/s3t_job.h"

namespace lethe::trainer {

struct RetrainReport {
  bool retrained = false;          // false: every sequence was at full depth and nothing was pending
  int sequences_restored = 0;      // sequences found below full depth
  std::vector<int> shards_revived;  // shards that were dead (no surviving prefix) or in retrain_pending
  int checkpoints_purged = 0;      // committed prefixes above a surviving prefix, removed first
  int steps_planned = 0;           // Σ (L − surviving prefix) over the truncated sequences
  int steps_trained = 0;           // prefix steps trained, all ranks
  std::int64_t samples = 0;        // training sample passes, all ranks
  std::int64_t model_version = 0;  // manifest["model_version"] afterwards (raised by one if retrained)
  double seconds = 0;              // wall time on rank 0, lock to commit
  nlohmann::json digests;          // {series: [digest of P_1, ..., P_L]} after the retrain
};

// Collective over `comm`. Rank 0 first takes storage::JobLock(job_dir, "lethe retrain") (an error
// naming the holder if `lethe serve` or another writer has it) and holds it to the end. Then, with
// the manifest's plans as the authority: purges every committed prefix checkpoint above a sequence's
// surviving prefix (idempotent), trains steps surviving+1..L of every truncated sequence with the
// original seeds on the dataset's live non-public records (run_s3t_job's resume path, spread over
// ranks as training is), and commits one manifest with the plans at full depth, retrain_pending
// emptied and model_version raised by one. `spec` must describe the job in `spec.job_dir` (its
// config digest is checked against the manifest). Nothing is written when nothing is truncated.
RetrainReport retrain_job(const S3TJobSpec& spec, comm::Communicator& comm);

}  // namespace lethe::trainer
