#include "trainer/s3t_retrain.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <set>
#include <string>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/record_assignment.h"
#include "trainer/error.h"
#include "trainer/s3t_job.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_state.h"

namespace lethe::trainer {

using nlohmann::json;

namespace {

// A sequence to restore: its place and how much of it survives.
struct Truncated {
  int shard = 0;
  int sequence = 0;
  int surviving = 0;
};

// Rank 0: checks the plans against the config and lists the sequences below full depth.
std::vector<Truncated> truncated_sequences(const JobManifest& manifest, const S3TSection& section, std::set<int>& revived) {
  const auto file = manifest.path().string();
  const auto& s3t = manifest.config.s3t;
  if (static_cast<int>(section.shards.size()) != s3t.shards) {
    throw TrainerError(ErrorKind::kDamaged, file + ": routes.s3t.shards: expected one entry per shard of the config (" +
                                                std::to_string(s3t.shards) + "); the job directory is inconsistent");
  }
  const auto orders = select_sequences(s3t.selection, s3t.slices, s3t.sequences, s3t.deletion_probabilities, s3t.horizon);
  std::vector<Truncated> out;
  for (const auto& shard : section.shards) {
    const auto field = file + ": routes.s3t.shards[" + std::to_string(shard.shard) + "].plan";
    const auto& plan = shard.plan;
    if (plan.slices != s3t.slices || static_cast<int>(plan.sequences.size()) != s3t.sequences) {
      throw TrainerError(ErrorKind::kDamaged, field + ": " + std::to_string(plan.slices) + " slices and " +
                                                  std::to_string(plan.sequences.size()) + " sequences, but the config says " +
                                                  std::to_string(s3t.slices) + " and " + std::to_string(s3t.sequences) +
                                                  "; the job directory is inconsistent");
    }
    if (is_dead(plan)) revived.insert(shard.shard);
    for (int b = 0; b < s3t.sequences; ++b) {
      const auto& state = plan.sequences[static_cast<std::size_t>(b)];
      if (state.order != orders[static_cast<std::size_t>(b)]) {
        throw TrainerError(ErrorKind::kDamaged, field + ".sequences[" + std::to_string(b) +
                                                    "].order differs from the order the config's selection gives; "
                                                    "retraining it would train another sequence. The job directory is "
                                                    "inconsistent");
      }
      if (state.surviving_prefix < s3t.slices) out.push_back({shard.shard, b, state.surviving_prefix});
    }
  }
  revived.insert(section.retrain_pending.begin(), section.retrain_pending.end());
  return out;
}

}  // namespace

std::string retrain_series_name(int shard, int sequence, const std::string& id) {
  return series_name(shard, sequence) + "-r" + id;
}

json retrain_s3t(const JobManifest& manifest, const RetrainSnapshot& snapshot, const std::string& id,
                 comm::Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  S3TSection section;
  std::set<int> revived;
  std::vector<std::uint64_t> packed;  // (shard, sequence, surviving) triples, for the other ranks
  comm::on_root(comm, "reading the S3T plans", [&] {
    section = decode_s3t_section(*manifest.section(kS3TRouteName), manifest.path().string());
    for (const auto& t : truncated_sequences(manifest, section, revived)) {
      packed.insert(packed.end(), {static_cast<std::uint64_t>(t.shard), static_cast<std::uint64_t>(t.sequence),
                                   static_cast<std::uint64_t>(t.surviving)});
    }
  });
  packed = comm::broadcast_u64s(comm, packed);
  std::vector<Truncated> truncated;
  for (std::size_t i = 0; i + 2 < packed.size(); i += 3) {
    truncated.push_back({static_cast<int>(packed[i]), static_cast<int>(packed[i + 1]), static_cast<int>(packed[i + 2])});
  }
  const int slices = manifest.config.s3t.slices;
  json report = {{"retrained", !truncated.empty()},
                 {"sequences_restored", truncated.size()},
                 {"shards_revived", revived},
                 {"steps_planned", 0},
                 {"steps_trained", 0},
                 {"samples", 0},
                 {"digests", json::object()}};
  int steps_planned = 0;
  for (const auto& t : truncated) steps_planned += slices - t.surviving;
  report["steps_planned"] = steps_planned;
  if (comm.rank() == 0) {
    spdlog::info("retrain {} of {}: {} sequences below full depth ({} steps), {} dead shards", id, manifest.dir.string(),
                 truncated.size(), steps_planned, revived.size());
  }
  if (truncated.empty()) {
    report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return {{"section", comm.rank() == 0 ? encode_s3t_section(section) : json()}, {"report", report}};
  }

  // Each rank seeds the new series of its own (shard, sequence) jobs with the surviving prefixes,
  // as checkpoints of their own: the old series stay untouched, served until the adoption.
  std::vector<std::pair<int, int>> only;
  for (const auto& t : truncated) only.emplace_back(t.shard, t.sequence);
  const auto mine = jobs_for_rank(manifest.config.s3t.shards, manifest.config.s3t.sequences, comm.rank(), comm.size());
  std::string encoded = comm.rank() == 0 ? encode_s3t_section(section).dump() : std::string();
  section = decode_s3t_section(json::parse(comm::broadcast_string(comm, encoded)), manifest.path().string());
  comm::on_every_rank(comm, "copying the surviving prefixes", [&] {
    storage::CheckpointStore store(manifest.checkpoints_path());
    for (const auto& t : truncated) {
      if (std::find(mine.begin(), mine.end(), std::pair(t.shard, t.sequence)) == mine.end()) continue;
      const auto& series = section.shards.at(static_cast<std::size_t>(t.shard)).series.at(static_cast<std::size_t>(t.sequence));
      const auto target = retrain_series_name(t.shard, t.sequence, id);
      if (!store.versions(target).empty()) store.purge_all(target);  // an interrupted attempt of this id
      for (int p = 1; p <= t.surviving; ++p) {
        const auto* checkpoint = series.find(p);
        if (checkpoint == nullptr) {
          throw TrainerError(ErrorKind::kDamaged, series.name + ": the plan keeps prefix " + std::to_string(p) +
                                                      " but the manifest records no checkpoint of it");
        }
        const auto loaded = store.load(series.name, checkpoint->version);
        if (loaded.info.digest != checkpoint->digest) {
          throw TrainerError(ErrorKind::kMismatch, loaded.info.path.string() + " is not the checkpoint the manifest records");
        }
        (void)store.write(target, loaded.tensors, loaded.info.metadata);
      }
    }
  });

  auto settings = manifest.config;
  settings.job_dir = manifest.dir;
  settings.dataset = manifest.dataset.path;
  settings.backbone = manifest.backbone_path();
  settings.trunk = manifest.trunk_path();
  S3TSection retrained = section;  // the snapshot's: the manifest may change while this trains
  S3TRunOptions options;
  options.resume = true;
  options.only = only;
  options.retrain_series = [&](int k, int b) { return retrain_series_name(k, b, id); };
  options.exclude_rows = snapshot.excluded_rows;
  options.retrained = &retrained;
  const auto run = run_s3t_job(settings, comm, options);
  std::int32_t steps = run.steps_trained;
  comm.allreduce({&steps, 1, comm::DataType::kInt32}, comm::ReduceOp::kSum);
  report["steps_trained"] = steps;
  report["samples"] = run.total_samples;
  report["digests"] = run.digests;
  json out = {{"report", report}};
  comm::on_root(comm, "checking the retrained plans", [&] {
    for (const auto& shard : retrained.shards) {
      for (std::size_t b = 0; b < shard.plan.sequences.size(); ++b) {
        if (shard.plan.sequences[b].surviving_prefix != slices) {
          throw TrainerError(ErrorKind::kDamaged, "retrain: shard " + std::to_string(shard.shard) + " sequence " +
                                                      std::to_string(b) + " ended at depth " +
                                                      std::to_string(shard.plan.sequences[b].surviving_prefix) + " of " +
                                                      std::to_string(slices) + "; run `lethe retrain` again");
        }
      }
    }
    retrained.retrain_pending.clear();
    out["section"] = encode_s3t_section(retrained);
  });
  out["report"]["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

RouteAdoption adopt_s3t(const JobManifest& current, const json& result, const std::vector<std::string>& deleted_ids,
                        const storage::Dataset& dataset) {
  auto section = decode_s3t_section(result.at("section"), current.path().string() + " (retrained section)");
  const auto now = decode_s3t_section(*current.section(kS3TRouteName), current.path().string());
  const storage::CheckpointStore store(current.checkpoints_path());
  RouteAdoption adoption;
  // The series the retrain replaced carry nothing the adopted models need: every version goes.
  for (std::size_t k = 0; k < section.shards.size(); ++k) {
    for (std::size_t b = 0; b < section.shards[k].series.size(); ++b) {
      const auto& old_name = now.shards.at(k).series.at(b).name;
      if (section.shards[k].series[b].name == old_name) continue;
      for (const auto& info : store.versions(old_name)) adoption.purge.push_back({old_name, info.version});
    }
  }
  // Records deleted while it trained: the adopted models forget them through slice deactivation.
  const storage::RecordAssigner assigner(dataset.layout().seed);
  auto truncation = truncate_section(section, deleted_ids, assigner, store);
  adoption.purge.insert(adoption.purge.end(), truncation.purge.begin(), truncation.purge.end());
  adoption.report = {{"records", deleted_ids.size()}, {"shards", std::move(truncation.shards)}};
  adoption.section = encode_s3t_section(section);
  return adoption;
}

}  // namespace lethe::trainer
