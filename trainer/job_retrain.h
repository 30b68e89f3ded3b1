// trainer/job_retrain.h — retraining beside a running service (DESIGN.md §3). `lethe retrain` trains
// every route that needs it into new checkpoint series from a snapshot of the job, and writes its
// result as a record; whoever holds the job (the service, or the retrain itself when nobody does)
// adopts it in one manifest commit, after making the new models forget every record deleted since
// the snapshot. Nothing the service serves is touched until then.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"

namespace lethe::storage {
class Dataset;  // storage/dataset.h
}  // namespace lethe::storage

namespace lethe::trainer {

// What a retrain read when it started: it trains only on records live then.
struct RetrainSnapshot {
  std::uint64_t generation = 0;              // of the manifest it read
  std::vector<std::uint64_t> excluded_rows;  // rows tombstoned, or awaiting erasure by the last batch
};

enum class RetrainStatus { kRunning, kTrained, kAdopted, kFailed, kNothingToDo };
[[nodiscard]] std::string_view to_string(RetrainStatus status);

// <job_dir>/retrain/<id>.json: one retrain's record, replaced durably at each change of status.
struct RetrainRun {
  std::string id;
  RetrainStatus status = RetrainStatus::kRunning;
  std::int64_t pid = 0;  // rank 0's process
  int ranks = 1;
  std::int64_t started_ms = 0;
  std::int64_t finished_ms = 0;  // trained, failed or nothing to do
  std::int64_t adopted_ms = 0;
  std::int64_t model_version = 0;  // the job's model version its adoption made
  RetrainSnapshot snapshot;
  std::string config_digest;
  std::string dataset_uuid;
  nlohmann::json routes = nlohmann::json::object();  // per route: {"section": proposed, "report": ...}
  nlohmann::json adoption = nlohmann::json::object();  // what the adoption did (records forgotten, purges)
  std::string error;  // when failed
};
[[nodiscard]] nlohmann::json to_json(const RetrainRun& run);

[[nodiscard]] std::filesystem::path retrain_dir(const std::filesystem::path& job_dir);
// Writes the record durably (rank 0).
void write_retrain_run(const std::filesystem::path& job_dir, const RetrainRun& run);
// Every retrain record of the job, oldest first; TrainerError (kDamaged) naming a record that does
// not parse.
[[nodiscard]] std::vector<RetrainRun> list_retrain_runs(const std::filesystem::path& job_dir);
[[nodiscard]] std::optional<RetrainRun> find_retrain_run(const std::filesystem::path& job_dir, const std::string& id);
// A new retrain id: 12 hex digits, distinct from the job's earlier ones.
[[nodiscard]] std::string new_retrain_id(const std::filesystem::path& job_dir);

// Rank 0, holding the retrain lock: retrains recorded as running died (no other can run), and
// trained ones older than the adopted one will never be adopted; both are marked failed and the
// checkpoints they wrote (series named <...>-r<id>) purged. Failed ones' leftovers go too.
void abandon_interrupted_retrains(const JobManifest& manifest);

// Collective; the caller holds the job's retrain lock. Abandons interrupted retrains, records `id`
// as running, trains every route
// that has a retrain (RouteKind::retrain) from `manifest` (every rank's copy of the job as it is
// now), and records the result as trained (or failed, with the error, which is rethrown). Never
// changes the manifest or anything a writer serves.
RetrainRun run_retrain(const JobManifest& manifest, const std::string& id, comm::Communicator& comm);

// For `lethe status` and GET /v1/models: {"in_progress": [{"id", "phase": "training" | "adopting",
// "started_ms", "pid"}], "last": {"id", "started_ms", "completed_ms", "model_version",
// "deleted_since_snapshot"} or null}. A retrain recorded as running whose process is gone (its lock
// is free) is not in progress: the next retrain cleans up after it. Reads only.
[[nodiscard]] nlohmann::json describe_retrains(const JobManifest& manifest);

// The trained retrain of the job not yet adopted by `manifest`, if any (the newest).
[[nodiscard]] std::optional<RetrainRun> pending_retrain(const JobManifest& manifest);

// What adopting `run` into `current` commits: the next manifest (each retrained route's section
// from the run, after forgetting the records deleted since the run's snapshot; model_version + 1;
// last_retrain) and the checkpoints the old models leave behind.
struct Adoption {
  JobManifest next;
  std::vector<PurgeTarget> purge;
  nlohmann::json report;
};
// Rank 0. TrainerError (kMismatch) when the run does not fit the job any more (another config or
// dataset, or an older run than the last one adopted).
[[nodiscard]] Adoption plan_adoption(const JobManifest& current, const RetrainRun& run, const storage::Dataset& dataset);
// Rank 0, after a manifest that adopted a retrain is committed (its last_retrain names the run
// and the checkpoints to purge): purges them and records the run adopted. Idempotent, so a writer
// that starts after a crash between the two finishes the job.
void finish_adoption(const JobManifest& committed);

}  // namespace lethe::trainer
