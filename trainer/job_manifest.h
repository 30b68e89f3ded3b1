// trainer/job_manifest.h — <job_dir>/manifest.json, the job's commit marker, as one typed record
// (LevelDB's VersionEdit): encoded and decoded here and nowhere else. Versioned, digested and
// generation-numbered: an edited or torn manifest is refused, and a writer never commits over a
// manifest it did not load. docs/JOB.md describes the format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/job_settings.h"
#include "trainer/model_config.h"

namespace lethe::trainer {

inline constexpr std::string_view kJobManifestFormat = "lethe-job";
inline constexpr int kJobManifestFormatVersion = 2;

enum class JobStatus { kTraining, kTrained };
[[nodiscard]] std::string_view to_string(JobStatus status);

// The dataset a job was trained on: where it is, which one it is, and what it holds.
struct DatasetIdentity {
  std::filesystem::path path;  // absolute in memory; stored relative to the job directory
  std::string uuid;            // storage::Dataset::uuid()
  std::string digest;          // storage::Dataset::content_digest() once the last batch's rows are erased
  bool operator==(const DatasetIdentity&) const = default;
};

// One checkpoint version a deletion batch invalidated: purged once the batch is committed.
struct PurgeTarget {
  std::string series;
  int version = 0;
  bool operator==(const PurgeTarget&) const = default;
};

// The last deletion batch, committed with the models it changed (the commit point of a batch).
// What follows the commit (purge, erase, receipts) is idempotent and replayed from here after a crash.
struct BatchRecord {
  std::vector<std::string> request_ids;
  std::int64_t records_deleted = 0;       // records the models forgot
  std::int64_t model_version = 0;         // the job's model version after the batch
  nlohmann::json models = nlohmann::json::array();  // one receipt part per route
  std::vector<PurgeTarget> purge;
  std::vector<std::uint64_t> erase_rows;  // dataset rows whose bytes are erased after the commit
};

// The last `lethe retrain` that committed.
struct RetrainRecord {
  std::int64_t completed_ms = 0;  // unix ms
  std::int64_t model_version = 0;
  nlohmann::json details = nlohmann::json::object();  // what it restored (trainer/s3t_retrain.h)
};

struct JobManifest {
  std::filesystem::path dir;       // in memory only: where the manifest was read or is written
  std::uint64_t generation = 0;    // 0 before the first commit; +1 per commit
  JobStatus status = JobStatus::kTraining;
  JobSettings config;              // as trained (paths absolute in memory, relative on disk)
  std::string config_digest;
  DatasetIdentity dataset;
  std::string backbone_file = "backbone.h5";  // relative to the job directory
  std::string backbone_digest;                // SHA-256 of that file
  std::string trunk_file;                     // the model.trunk copy, relative; empty: no trunk (SHA-256 in model.trunk)
  std::string checkpoints = "checkpoints";    // relative to the job directory
  ModelConfig model;                          // with the dataset's input shape
  std::int64_t model_version = 0;             // +1 per batch that deleted a record, and per retrain
  // Each route's own section, keyed by route name, encoded and decoded by the route (trainer/routes.h).
  std::map<std::string, nlohmann::json> routes;
  std::optional<BatchRecord> last_batch;
  std::optional<RetrainRecord> last_retrain;

  [[nodiscard]] std::filesystem::path path() const;  // dir / manifest.json
  [[nodiscard]] std::filesystem::path backbone_path() const { return dir / backbone_file; }
  [[nodiscard]] std::filesystem::path checkpoints_path() const { return dir / checkpoints; }
  // Empty when the job has no trunk.
  [[nodiscard]] std::filesystem::path trunk_path() const { return trunk_file.empty() ? std::filesystem::path() : dir / trunk_file; }
  // The section of `route`, or nullptr when the job has no such model.
  [[nodiscard]] const nlohmann::json* section(std::string_view route) const;
};

[[nodiscard]] std::filesystem::path job_manifest_path(const std::filesystem::path& job_dir);

// Reads and checks the manifest: TrainerError kNotFound when there is none ("not a job
// directory"), kDamaged when it is not JSON, not a Lethe job manifest, of another format version,
// or its content does not match its digest (edited by hand or damaged), naming the file.
[[nodiscard]] JobManifest read_job_manifest(const std::filesystem::path& job_dir);

// Commits `manifest` atomically (tmp, fsync, rename, directory fsync) as generation + 1 and
// updates its generation. Refuses (TrainerError kConflict, nothing written) when the manifest on
// disk is not the generation this one was loaded as: another writer committed meanwhile.
void commit_job_manifest(JobManifest& manifest);

// The JSON as stored (digest included) and back, for tests and tools that show a manifest.
[[nodiscard]] nlohmann::json encode_job_manifest(const JobManifest& manifest);
[[nodiscard]] JobManifest decode_job_manifest(const nlohmann::json& json, const std::filesystem::path& job_dir);

}  // namespace lethe::trainer
