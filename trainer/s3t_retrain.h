// trainer/s3t_retrain.h — the S3T model's retrain (DESIGN.md §3): restores every truncated sequence
// to full depth on the dataset's current live records, continuing from its surviving prefix.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"

namespace lethe::trainer {

struct RetrainReport {
  bool retrained = false;          // false: every sequence was at full depth and nothing was pending
  int sequences_restored = 0;      // sequences found below full depth
  std::vector<int> shards_revived;  // shards that were dead (no surviving prefix) or in retrain_pending
  int checkpoints_purged = 0;      // committed prefixes above a surviving prefix, removed first
  int steps_planned = 0;           // Σ (L − surviving prefix) over the truncated sequences
  int steps_trained = 0;           // prefix steps trained, all ranks
  std::int64_t samples = 0;        // training sample passes, all ranks
  std::int64_t model_version = 0;  // the job's model version afterwards (raised by one if retrained)
  double seconds = 0;              // wall time on rank 0
  nlohmann::json digests;          // {series: [digest of P_1, ..., P_L]} after the retrain
};
[[nodiscard]] nlohmann::json to_json(const RetrainReport& report);

// Collective over `comm`; the caller holds the job lock (storage/job_lock.h) and opened the job
// (trainer/job.h open_trained_job: `manifest` on every rank). With the manifest's plans as the
// authority: purges every committed prefix checkpoint above a sequence's surviving prefix
// (idempotent), trains steps surviving+1..L of every truncated sequence with the original seeds on
// the dataset's live non-public records (run_s3t_job's resume path, spread over ranks as training
// is), and commits one manifest with the plans at full depth, retrain_pending emptied, model_version
// raised by one and last_retrain recorded. Nothing is written when nothing is truncated.
RetrainReport retrain_s3t(JobManifest& manifest, comm::Communicator& comm);

}  // namespace lethe::trainer
