#include "trainer/s3t_retrain.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>

#include "storage/checkpoint_store.h"
#include "storage/job_lock.h"
#include "trainer/job_manifest.h"
#include "trainer/s3t_plan.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// What rank 0 found in the manifest and did before training.
struct Preparation {
  int sequences_restored = 0;
  std::set<int> shards_revived;
  int checkpoints_purged = 0;
  int steps_planned = 0;
  std::int64_t model_version = 0;
};

std::int64_t model_version_of(const json& manifest, const std::string& file) {
  if (!manifest.contains("model_version")) return 0;
  const auto& v = manifest["model_version"];
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0) {
    throw std::runtime_error(file + ": model_version: expected a non-negative integer, got " + v.dump() +
                             "; the manifest is damaged");
  }
  return v.get<std::int64_t>();
}

// Reads the plans, checks them against the config, and purges what the plans no longer cover.
Preparation prepare_retrain(const S3TJobSpec& spec) {
  const auto file = job_manifest_path(spec.job_dir).string();
  const auto manifest = read_job_manifest(spec.job_dir);
  if (!manifest.contains("shards") || !manifest["shards"].is_array() || manifest["shards"].empty()) {
    throw std::runtime_error(file + " lists no S3T shards: this job has no S3T model, so there is nothing to retrain "
                             "(noisy-GD deletions need no retraining)");
  }
  if (static_cast<int>(manifest["shards"].size()) != spec.shards) {
    throw std::runtime_error(file + ": shards: expected one entry per shard of the config (" + std::to_string(spec.shards) +
                             "); the job directory does not match its config.json");
  }
  // Checked here, before anything is purged, for a message about retraining (the resume path checks too).
  if (manifest.value("config_digest", "") != spec.config_digest) {
    throw std::runtime_error(file + ": config_digest " + manifest.value("config_digest", "(none)") + " differs from " +
                             spec.config_digest + ", the digest of " + (spec.job_dir / "config.json").string() +
                             " as this lethe reads it: config.json was edited, or the job was trained by a lethe whose "
                             "config format differs. Retraining would not reproduce the run; train the job anew");
  }
  Preparation prep;
  prep.model_version = model_version_of(manifest, file);
  const auto orders = select_sequences(spec.selection, spec.slices, spec.sequences, spec.deletion_probabilities, spec.horizon);
  storage::CheckpointStore store(spec.job_dir / manifest.value("checkpoints", "checkpoints"));
  for (int k = 0; k < spec.shards; ++k) {
    const auto field = file + ": shards[" + std::to_string(k) + "].plan";
    const auto plan = shard_plan_from_json(manifest["shards"][static_cast<std::size_t>(k)].at("plan"), field);
    if (plan.slices != spec.slices || static_cast<int>(plan.sequences.size()) != spec.sequences) {
      throw std::runtime_error(field + ": " + std::to_string(plan.slices) + " slices and " +
                               std::to_string(plan.sequences.size()) + " sequences, but config.json says " +
                               std::to_string(spec.slices) + " and " + std::to_string(spec.sequences) +
                               "; the job directory is inconsistent");
    }
    if (is_dead(plan)) prep.shards_revived.insert(k);
    for (int b = 0; b < spec.sequences; ++b) {
      const auto& state = plan.sequences[static_cast<std::size_t>(b)];
      if (state.order != orders[static_cast<std::size_t>(b)]) {
        throw std::runtime_error(field + ".sequences[" + std::to_string(b) +
                                 "].order differs from the order config.json's selection gives; retraining it would "
                                 "train another sequence. The job directory is inconsistent");
      }
      if (state.surviving_prefix < spec.slices) {
        ++prep.sequences_restored;
        prep.steps_planned += spec.slices - state.surviving_prefix;
      }
      // The plan is the authority: anything committed above the surviving prefix carries a deleted
      // record's influence, even if the coordinator has not purged it yet (or crashed doing so).
      const auto name = series_name(k, b);
      for (const auto& info : store.versions(name)) {
        if (info.metadata.contains("prefix") && info.metadata["prefix"].get<int>() > state.surviving_prefix) {
          store.purge(name, info.version);
          ++prep.checkpoints_purged;
        }
      }
    }
  }
  if (manifest.contains("retrain_pending")) {
    const auto& pending = manifest["retrain_pending"];
    if (!pending.is_array()) throw std::runtime_error(file + ": retrain_pending: expected an array of shard ids, got " + pending.dump());
    for (const auto& shard : pending) {
      if (!shard.is_number_integer() || shard.get<std::int64_t>() < 0 || shard.get<std::int64_t>() >= spec.shards) {
        throw std::runtime_error(file + ": retrain_pending: " + shard.dump() + " is not a shard id (0.." +
                                 std::to_string(spec.shards - 1) + ")");
      }
      prep.shards_revived.insert(shard.get<int>());
    }
  }
  return prep;
}

// The manifest's own check that the retrain did what it promised, before it is committed; records
// the retrain as "last_retrain" (when, what, the model version it made) for `lethe status`.
void finish_retrain(json& manifest, const S3TJobSpec& spec, const Preparation& prep, std::int64_t new_version) {
  for (const auto& shard : manifest.at("shards")) {
    const auto plan = shard_plan_from_json(shard.at("plan"), "manifest.shards.plan");
    for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
      if (plan.sequences[b].surviving_prefix != spec.slices) {
        throw std::runtime_error("retrain: shard " + shard.at("shard").dump() + " sequence " + std::to_string(b) +
                                 " ended at depth " + std::to_string(plan.sequences[b].surviving_prefix) + " of " +
                                 std::to_string(spec.slices) + "; the manifest was left as it was, run `lethe retrain` again");
      }
    }
  }
  manifest["retrain_pending"] = json::array();
  manifest["model_version"] = new_version;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  manifest["last_retrain"] = {{"completed_ms", std::chrono::duration_cast<std::chrono::milliseconds>(now).count()},
                              {"model_version", new_version},
                              {"sequences_restored", prep.sequences_restored},
                              {"shards_revived", prep.shards_revived},
                              {"steps_planned", prep.steps_planned}};
}

}  // namespace

RetrainReport retrain_job(const S3TJobSpec& spec, comm::Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_ptr<storage::JobLock> lock;
  Preparation prep;
  std::string error;
  if (comm.rank() == 0) {
    try {
      lock = std::make_unique<storage::JobLock>(spec.job_dir, "lethe retrain");
      prep = prepare_retrain(spec);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree_on_failure(comm, error, "locking and reading the job directory");

  // Rank 0's findings reach every rank: whether to train at all, and the current model version.
  std::int64_t shared[2] = {prep.sequences_restored > 0 || !prep.shards_revived.empty() ? 1 : 0, prep.model_version};
  comm.allreduce({shared, 2, comm::DataType::kInt64}, comm::ReduceOp::kMax);
  RetrainReport report;
  report.sequences_restored = prep.sequences_restored;
  report.shards_revived.assign(prep.shards_revived.begin(), prep.shards_revived.end());
  report.checkpoints_purged = prep.checkpoints_purged;
  report.steps_planned = prep.steps_planned;
  report.retrained = shared[0] != 0;
  report.model_version = shared[1];
  if (comm.rank() == 0) {
    spdlog::info("retrain {}: {} sequences below full depth ({} steps), shards revived {}, {} checkpoints purged",
                 spec.job_dir.string(), prep.sequences_restored, prep.steps_planned, report.shards_revived.size(),
                 prep.checkpoints_purged);
  }
  if (report.retrained) {
    const std::int64_t new_version = report.model_version + 1;
    S3TRunOptions options;
    options.resume = true;  // every series continues from its (now purged down to) surviving prefix
    options.before_manifest_commit = [&](json& manifest) { finish_retrain(manifest, spec, prep, new_version); };
    const auto run = run_s3t_job(spec, comm, options);
    std::int32_t steps = run.steps_trained;
    comm.allreduce({&steps, 1, comm::DataType::kInt32}, comm::ReduceOp::kSum);
    report.steps_trained = steps;
    report.samples = run.total_samples;
    report.digests = run.digests;
    report.model_version = new_version;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace lethe::trainer
