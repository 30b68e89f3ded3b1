#include "trainer/s3t_route.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/record_assignment.h"
#include "trainer/ensemble.h"
#include "trainer/error.h"
#include "trainer/frozen_backbone.h"
#include "trainer/routes.h"
#include "trainer/s3t_job.h"
#include "trainer/s3t_retrain.h"
#include "trainer/s3t_state.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Rows per forward pass when predicting.
constexpr std::int64_t kPredictBatch = 1024;

// What an S3T route serves: the plans, and per live shard the served prefix checkpoint. Rank 0 only
// (the route's deletions are metadata; other ranks hold an empty state).
struct S3TState {
  S3TSection section;
  std::vector<EnsembleMember> members;  // one per live shard, in shard order
  std::shared_ptr<FrozenBackbone> backbone;
  fs::path checkpoints;
  std::string origin;  // the manifest, for messages
  std::string job_dir;
  std::optional<storage::RecordAssigner> assigner;  // the dataset's shard and slice assignment
  comm::Communicator* comm = nullptr;                // every rank
};

// Loads the served prefix of every live shard, each checked against the digest the section records.
std::vector<EnsembleMember> load_members(const S3TSection& section, const storage::CheckpointStore& store,
                                         const std::vector<EnsembleMember>& reuse = {}) {
  std::vector<EnsembleMember> members;
  for (const auto& shard : section.shards) {
    const auto choice = serving_choice(shard.plan);
    if (!choice) continue;
    const auto same = std::find_if(reuse.begin(), reuse.end(), [&](const EnsembleMember& m) {
      return m.shard == shard.shard && m.sequence == choice->sequence && m.state.prefix == choice->depth;
    });
    if (same != reuse.end()) {
      members.push_back(*same);
      continue;
    }
    const auto& series = shard.series.at(static_cast<std::size_t>(choice->sequence));
    const auto* checkpoint = series.find(choice->depth);
    if (checkpoint == nullptr) {
      throw TrainerError(ErrorKind::kDamaged, series.name + ": the plan serves prefix " + std::to_string(choice->depth) +
                                                  " but the manifest records no checkpoint of it; the job directory is "
                                                  "inconsistent: restore it from a backup");
    }
    members.push_back({shard.shard, choice->sequence, load_prefix(store, series.name, *checkpoint)});
  }
  return members;
}

class S3TRoute final : public ModelRoute {
 public:
  explicit S3TRoute(std::shared_ptr<const S3TState> state) : state_(std::move(state)) {}

  [[nodiscard]] std::string_view name() const override { return kS3TRouteName; }

  [[nodiscard]] RouteChange prepare_deletion(const DeletionBatch& batch) const override {
    RouteChange change;
    change.next = std::make_shared<S3TRoute>(state_);
    comm::on_root(*state_->comm, "planning the S3T deletions", [&] { change = plan(batch); });
    return change;
  }

  [[nodiscard]] at::Tensor predict(const at::Tensor& inputs) const override {
    const auto& s = *state_;
    if (s.members.empty()) {
      throw TrainerError(ErrorKind::kUnavailable,
                         "the S3T ensemble has no live shard: deletions cut every sequence of every shard before its "
                         "first slice. Stop the service and run `lethe retrain --job " + s.job_dir +
                             "`, or predict with another model of the job (GET /v1/models lists them)");
    }
    torch::Tensor probabilities;
    s.backbone->use([&](LetheModel& model) {
      probabilities = ensemble_probabilities(model, s.members, inputs, kPredictBatch);
    });
    return probabilities;
  }

  [[nodiscard]] json eval_details() const override {
    json shards = json::array();
    for (const auto& shard : state_->section.shards) {
      const auto choice = serving_choice(shard.plan);
      shards.push_back({{"shard", shard.shard},
                        {"sequence", choice ? json(choice->sequence) : json(nullptr)},
                        {"depth", choice ? choice->depth : 0}});
    }
    return {{"live_shards", state_->members.size()}, {"shards", shards}};
  }

  [[nodiscard]] std::vector<Gauge> gauges() const override {
    std::vector<Gauge> out;
    for (const auto& shard : state_->section.shards) {
      const auto choice = serving_choice(shard.plan);
      out.push_back({"lethe_s3t_live_depth", "Served prefix depth per S3T shard (0: dead, retrain scheduled).",
                     {{"shard", std::to_string(shard.shard)}}, static_cast<double>(choice ? choice->depth : 0)});
    }
    return out;
  }

  void describe_record(std::string_view id, json& entry) const override {
    const auto& section = state_->section;
    if (section.shards.empty()) return;
    const auto a = state_->assigner->assign(id, static_cast<int>(section.shards.size()), section.shards.front().plan.slices);
    entry["shard"] = a.shard;
    entry["slice"] = a.slice;
  }

  [[nodiscard]] RetrainNeed retrain_need() const override {
    RetrainNeed need;
    int truncated = 0;
    int steps = 0;
    json dead = json::array();
    for (const auto& shard : state_->section.shards) {
      if (is_dead(shard.plan)) dead.push_back(shard.shard);
      for (const auto& sequence : shard.plan.sequences) {
        if (sequence.surviving_prefix < shard.plan.slices) {
          ++truncated;
          steps += shard.plan.slices - sequence.surviving_prefix;
        }
      }
    }
    need.needed = truncated > 0;
    need.reason = std::to_string(dead.size()) + " of " + std::to_string(state_->section.shards.size()) +
                  " shards dead, " + std::to_string(truncated) + " sequences truncated";
    need.detail = {{"shards_dead", dead}, {"sequences_truncated", truncated}, {"steps", steps}};
    need.parts = static_cast<int>(state_->section.shards.size());
    need.live = need.parts - static_cast<int>(dead.size());
    double depth = 0;
    for (const auto& shard : state_->section.shards) {
      const auto choice = serving_choice(shard.plan);
      depth += choice ? static_cast<double>(choice->depth) / shard.plan.slices : 0.0;
    }
    need.strength = need.parts > 0 ? depth / need.parts : 1.0;
    return need;
  }

 private:
  // Rank 0: truncates the plans of the batch's shards on a copy, lists the checkpoints to purge,
  // and loads the newly served prefixes, so that the swap itself cannot fail.
  RouteChange plan(const DeletionBatch& batch) const {
    const auto& s = *state_;
    auto next = std::make_shared<S3TState>(s);
    auto& section = next->section;
    RouteChange change;
    change.receipt = {{"name", kS3TRouteName}, {"route", "slice_deactivation"}, {"shards", json::array()}};
    if (batch.ids.empty() || section.shards.empty()) {
      change.next = std::make_shared<S3TRoute>(state_);
      change.section = encode_s3t_section(section);
      return change;
    }
    const storage::CheckpointStore store(s.checkpoints);
    auto truncation = truncate_section(section, batch.ids, *s.assigner, store);
    change.receipt["shards"] = std::move(truncation.shards);
    change.purge = std::move(truncation.purge);
    next->members = load_members(section, store, s.members);
    change.next = std::make_shared<S3TRoute>(next);
    change.section = encode_s3t_section(section);
    return change;
  }

  std::shared_ptr<const S3TState> state_;
};

json describe(const JobManifest& manifest, const json& encoded) {
  const auto section = decode_s3t_section(encoded, manifest.path().string());
  json shards = json::array();
  int live = 0;
  int slices = 0;
  for (const auto& shard : section.shards) {
    slices = shard.plan.slices;
    const auto choice = serving_choice(shard.plan);
    json sequences = json::array();
    for (std::size_t b = 0; b < shard.plan.sequences.size(); ++b) {
      sequences.push_back({{"sequence", b}, {"surviving_prefix", shard.plan.sequences[b].surviving_prefix}});
    }
    live += choice ? 1 : 0;
    shards.push_back({{"shard", shard.shard},
                      {"live", choice.has_value()},
                      {"served_sequence", choice ? json(choice->sequence) : json(nullptr)},
                      {"depth", choice ? choice->depth : 0},
                      {"sequences", sequences}});
  }
  return {{"name", kS3TRouteName},
          {"route", "slice_deactivation"},
          {"version", manifest.model_version},
          {"slices", slices},
          {"live_shards", live},
          {"shards", shards},
          {"retrain_pending", section.retrain_pending}};
}

std::unique_ptr<ModelRoute> load(const RouteContext& context) {
  auto state = std::make_shared<S3TState>();
  state->comm = &context.comm;
  comm::on_root(context.comm, "loading the S3T model", [&] {
    const auto& manifest = context.manifest;
    state->origin = manifest.path().string();
    state->section = decode_s3t_section(*manifest.section(kS3TRouteName), state->origin);
    state->checkpoints = manifest.checkpoints_path();
    state->backbone = context.backbone;
    state->job_dir = manifest.dir.string();
    state->assigner.emplace(context.dataset.layout().seed);
    state->members = load_members(state->section, storage::CheckpointStore(state->checkpoints));
  });
  return std::make_unique<S3TRoute>(state);
}

bool configured(const JobSettings& settings) { return settings.s3t.enabled; }

json check_inputs(const JobSettings& settings, const storage::Dataset& dataset) {
  int fewest = std::numeric_limits<int>::max();
  for (const auto& shard : assign_records(dataset, settings)) {
    std::vector<int> counts(static_cast<std::size_t>(settings.s3t.slices), 0);
    for (const auto slice : shard.slice_of_record) ++counts[static_cast<std::size_t>(slice)];
    fewest = std::min(fewest, *std::min_element(counts.begin(), counts.end()));
  }
  return {{"shards", settings.s3t.shards},
          {"slices", settings.s3t.slices},
          {"sequences", settings.s3t.sequences},
          {"selection", std::string(to_string(settings.s3t.selection))},
          {"fewest_records_per_slice", fewest}};
}

json train(const JobSettings& settings, comm::Communicator& comm, bool resume) {
  S3TRunOptions options;
  options.resume = resume;
  const auto report = run_s3t_job(settings, comm, options);
  return {{"shards", settings.s3t.shards},
          {"slices", settings.s3t.slices},
          {"sequences", settings.s3t.sequences},
          {"rank0", {{"jobs", report.jobs}, {"steps_trained", report.steps_trained},
                     {"steps_resumed", report.steps_resumed}, {"train_seconds", report.train_seconds},
                     {"cache_seconds", report.cache_seconds}}},
          {"samples", report.total_samples},
          {"seconds", report.seconds},
          {"samples_per_second", report.seconds > 0 ? static_cast<double>(report.total_samples) / report.seconds : 0.0},
          {"digests", report.digests}};
}



}  // namespace

const RouteKind& s3t_route_kind() {
  static const RouteKind kind{kS3TRouteName, configured, train, check_inputs, load, describe, retrain_s3t, adopt_s3t};
  return kind;
}

}  // namespace lethe::trainer
