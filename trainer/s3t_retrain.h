// trainer/s3t_retrain.h — the S3T model's retrain (DESIGN.md §3): every truncated sequence back to
// full depth on the records its snapshot left live, continuing from its surviving prefix, trained
// into a new checkpoint series per sequence so that a running service keeps serving the old ones;
// and its adoption: the new section, minus what was deleted meanwhile.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"
#include "trainer/job_retrain.h"
#include "trainer/routes.h"

namespace lethe::trainer {

// The checkpoint series retrain `id` trains sequence (shard, sequence) into.
[[nodiscard]] std::string retrain_series_name(int shard, int sequence, const std::string& id);

// Collective (RouteKind::retrain of S3T). Checks the plans against the config, copies each truncated
// sequence's surviving prefixes into its new series, trains the remaining steps with the original
// seeds (run_s3t_job's resume path, spread over ranks as training is) and returns (rank 0)
// {"section": the S3T section at full depth on the new series, "report": {"retrained",
// "sequences_restored", "shards_revived", "steps_planned", "steps_trained", "samples", "seconds",
// "digests"}}. Writes nothing but the new series.
[[nodiscard]] nlohmann::json retrain_s3t(const JobManifest& manifest, const RetrainSnapshot& snapshot, const std::string& id,
                                         comm::Communicator& comm);

// Rank 0 (RouteKind::adopt of S3T): the retrained section after forgetting `deleted_ids`, with every
// version of the series it replaced and every new prefix a deleted record invalidated to purge.
[[nodiscard]] RouteAdoption adopt_s3t(const JobManifest& current, const nlohmann::json& result,
                                      const std::vector<std::string>& deleted_ids, const storage::Dataset& dataset);

}  // namespace lethe::trainer
