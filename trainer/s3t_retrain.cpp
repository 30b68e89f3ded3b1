#include "trainer/s3t_retrain.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <set>
#include <string>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "trainer/error.h"
#include "trainer/s3t_job.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_state.h"

namespace lethe::trainer {

using nlohmann::json;

namespace {

// What rank 0 found in the manifest and did before training.
struct Preparation {
  int sequences_restored = 0;
  std::set<int> shards_revived;
  int checkpoints_purged = 0;
  int steps_planned = 0;
};

// Checks the plans against the config, and purges what the plans no longer cover.
Preparation prepare_retrain(const JobManifest& manifest) {
  const auto file = manifest.path().string();
  const auto& s3t = manifest.config.s3t;
  const auto* encoded = manifest.section(kS3TRouteName);
  if (encoded == nullptr) {
    throw TrainerError(ErrorKind::kNotFound, file + " holds no S3T model, so there is nothing to retrain "
                                                    "(noisy-GD deletions need no retraining)");
  }
  const auto section = decode_s3t_section(*encoded, file);
  if (static_cast<int>(section.shards.size()) != s3t.shards) {
    throw TrainerError(ErrorKind::kDamaged, file + ": routes.s3t.shards: expected one entry per shard of the config (" +
                                                std::to_string(s3t.shards) + "); the job directory is inconsistent");
  }
  Preparation prep;
  const auto orders = select_sequences(s3t.selection, s3t.slices, s3t.sequences, s3t.deletion_probabilities, s3t.horizon);
  storage::CheckpointStore store(manifest.checkpoints_path());
  for (const auto& shard : section.shards) {
    const auto field = file + ": routes.s3t.shards[" + std::to_string(shard.shard) + "].plan";
    const auto& plan = shard.plan;
    if (plan.slices != s3t.slices || static_cast<int>(plan.sequences.size()) != s3t.sequences) {
      throw TrainerError(ErrorKind::kDamaged, field + ": " + std::to_string(plan.slices) + " slices and " +
                                                  std::to_string(plan.sequences.size()) + " sequences, but the config says " +
                                                  std::to_string(s3t.slices) + " and " + std::to_string(s3t.sequences) +
                                                  "; the job directory is inconsistent");
    }
    if (is_dead(plan)) prep.shards_revived.insert(shard.shard);
    for (int b = 0; b < s3t.sequences; ++b) {
      const auto& state = plan.sequences[static_cast<std::size_t>(b)];
      if (state.order != orders[static_cast<std::size_t>(b)]) {
        throw TrainerError(ErrorKind::kDamaged, field + ".sequences[" + std::to_string(b) +
                                                    "].order differs from the order the config's selection gives; "
                                                    "retraining it would train another sequence. The job directory is "
                                                    "inconsistent");
      }
      if (state.surviving_prefix < s3t.slices) {
        ++prep.sequences_restored;
        prep.steps_planned += s3t.slices - state.surviving_prefix;
      }
      // The plan is the authority: anything committed above the surviving prefix carries a deleted
      // record's influence, even if the coordinator has not purged it yet (or crashed doing so).
      const auto name = series_name(shard.shard, b);
      for (const auto& info : store.versions(name)) {
        if (info.metadata.contains("prefix") && info.metadata["prefix"].get<int>() > state.surviving_prefix) {
          store.purge(name, info.version);
          ++prep.checkpoints_purged;
        }
      }
    }
  }
  prep.shards_revived.insert(section.retrain_pending.begin(), section.retrain_pending.end());
  return prep;
}

// The manifest's own check that the retrain did what it promised, before it is committed; records
// the retrain as last_retrain for `lethe status`.
void finish_retrain(JobManifest& manifest, const Preparation& prep, std::int64_t new_version) {
  auto section = decode_s3t_section(*manifest.section(kS3TRouteName), manifest.path().string());
  const int slices = manifest.config.s3t.slices;
  for (const auto& shard : section.shards) {
    for (std::size_t b = 0; b < shard.plan.sequences.size(); ++b) {
      if (shard.plan.sequences[b].surviving_prefix != slices) {
        throw TrainerError(ErrorKind::kDamaged,
                           "retrain: shard " + std::to_string(shard.shard) + " sequence " + std::to_string(b) +
                               " ended at depth " + std::to_string(shard.plan.sequences[b].surviving_prefix) + " of " +
                               std::to_string(slices) + "; the manifest was left as it was, run `lethe retrain` again");
      }
    }
  }
  section.retrain_pending.clear();
  manifest.routes[kS3TRouteName] = encode_s3t_section(section);
  manifest.model_version = new_version;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  manifest.last_retrain = RetrainRecord{std::chrono::duration_cast<std::chrono::milliseconds>(now).count(), new_version,
                                        {{"sequences_restored", prep.sequences_restored},
                                         {"shards_revived", prep.shards_revived},
                                         {"steps_planned", prep.steps_planned}}};
}

}  // namespace

json to_json(const RetrainReport& r) {
  return {{"retrained", r.retrained},         {"sequences_restored", r.sequences_restored},
          {"shards_revived", r.shards_revived}, {"checkpoints_purged", r.checkpoints_purged},
          {"steps_planned", r.steps_planned},   {"steps_trained", r.steps_trained},
          {"samples", r.samples},               {"model_version", r.model_version},
          {"seconds", r.seconds},               {"digests", r.digests}};
}

RetrainReport retrain_s3t(JobManifest& manifest, comm::Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  Preparation prep;
  comm::on_root(comm, "reading the S3T plans", [&] { prep = prepare_retrain(manifest); });

  // Rank 0's findings reach every rank: whether to train at all.
  std::int64_t needed = prep.sequences_restored > 0 || !prep.shards_revived.empty() ? 1 : 0;
  comm.allreduce({&needed, 1, comm::DataType::kInt64}, comm::ReduceOp::kMax);
  RetrainReport report;
  report.sequences_restored = prep.sequences_restored;
  report.shards_revived.assign(prep.shards_revived.begin(), prep.shards_revived.end());
  report.checkpoints_purged = prep.checkpoints_purged;
  report.steps_planned = prep.steps_planned;
  report.retrained = needed != 0;
  report.model_version = manifest.model_version;
  if (comm.rank() == 0) {
    spdlog::info("retrain {}: {} sequences below full depth ({} steps), shards revived {}, {} checkpoints purged",
                 manifest.dir.string(), prep.sequences_restored, prep.steps_planned, report.shards_revived.size(),
                 prep.checkpoints_purged);
  }
  if (report.retrained) {
    const std::int64_t new_version = manifest.model_version + 1;
    S3TRunOptions options;
    options.resume = true;  // every series continues from its (now purged down to) surviving prefix
    options.before_manifest_commit = [&](JobManifest& next) { finish_retrain(next, prep, new_version); };
    // The job's own copies are the authority, wherever the config pointed when it was trained.
    auto settings = manifest.config;
    settings.job_dir = manifest.dir;
    settings.dataset = manifest.dataset.path;
    settings.backbone = manifest.backbone_path();
    const auto run = run_s3t_job(settings, comm, options);
    if (comm.rank() == 0) manifest = read_job_manifest(manifest.dir);
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
