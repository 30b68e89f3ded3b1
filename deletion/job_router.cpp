#include "deletion/job_router.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <unordered_set>

#include "storage/checkpoint_store.h"
#include "storage/erasure.h"
#include "storage/error.h"
#include "trainer/ensemble.h"
#include "trainer/job_manifest.h"
#include "trainer/model.h"
#include "trainer/noisy_gd.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/pretrain.h"
#include "trainer/s3t_job.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_serving.h"

namespace lethe::deletion {

namespace fs = std::filesystem;
using nlohmann::json;

json to_json(const BatchOutcome& outcome) {
  json purge = json::array();
  for (const auto& target : outcome.purge) purge.push_back({{"series", target.series}, {"version", target.version}});
  return {{"requests", outcome.request_ids},   {"records_deleted", outcome.records_deleted},
          {"model_version", outcome.model_version}, {"models", outcome.models}, {"purge", purge}};
}

BatchOutcome batch_outcome_from_json(const json& j) {
  BatchOutcome outcome;
  outcome.request_ids = j.at("requests").get<std::vector<std::string>>();
  outcome.records_deleted = j.at("records_deleted").get<std::int64_t>();
  outcome.model_version = j.at("model_version").get<std::int64_t>();
  outcome.models = j.at("models");
  for (const auto& target : j.at("purge")) outcome.purge.push_back({target.at("series"), target.at("version")});
  return outcome;
}

struct JobRouter::State {
  // Rank 0.
  json manifest;
  fs::path dataset;
  std::optional<Partition> partition;
  std::vector<trainer::ShardPlan> plans;
  std::unique_ptr<trainer::LetheModel> model;  // frozen backbone; adapters and head are swapped per member
  trainer::S3TServing serving;
  double input_scale = 1.0;  // dataset units -> model inputs (uint8 pixels are scaled to [0, 1])
  // Opened writable at the first resolve (after every rank has read its share) and kept open:
  // opening indexes every id, too slow to repeat per batch.
  std::optional<storage::Dataset> open_dataset;
  // Every rank, when the job has a noisy-GD model.
  std::optional<trainer::NoisyGdModel> noisy;
  trainer::NoisyGdShare share;
};

namespace {

// Broadcasts a list of strings from rank 0 (newline-separated; ids hold no control characters).
std::vector<std::string> broadcast_strings(comm::Communicator& comm, const std::vector<std::string>& values) {
  std::string text;
  if (comm.rank() == 0) {
    for (const auto& value : values) text += value + '\n';
  }
  std::int64_t size = static_cast<std::int64_t>(text.size());
  comm.broadcast({&size, 1, comm::DataType::kInt64}, 0);
  text.resize(static_cast<std::size_t>(size));
  if (size > 0) comm.broadcast({text.data(), text.size(), comm::DataType::kUInt8}, 0);
  std::vector<std::string> out;
  std::size_t begin = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos; begin = end + 1, end = text.find('\n', begin)) {
    out.push_back(text.substr(begin, end - begin));
  }
  return out;
}

// This rank's share without the rows whose id is in `deleted`.
trainer::NoisyGdShare without(const trainer::NoisyGdShare& share, const std::unordered_set<std::string>& deleted) {
  std::vector<std::int64_t> keep;
  trainer::NoisyGdShare out;
  for (std::size_t i = 0; i < share.ids.size(); ++i) {
    if (deleted.count(share.ids[i]) == 0) {
      keep.push_back(static_cast<std::int64_t>(i));
      out.ids.push_back(share.ids[i]);
    }
  }
  const auto index = torch::tensor(keep, torch::kInt64);
  out.data.features = share.data.features.index_select(0, index);
  out.data.labels = share.data.labels.index_select(0, index);
  return out;
}

}  // namespace

JobRouter::JobRouter(fs::path job_dir, comm::Communicator& comm)
    : job_dir_(std::move(job_dir)), comm_(&comm), state_(std::make_unique<State>()) {
  std::string error;
  bool noisy = false;
  if (comm.rank() == 0) {
    try {
      auto& s = *state_;
      s.manifest = trainer::read_job_manifest(job_dir_);
      if (s.manifest.value("status", "") != "trained") {
        throw storage::StorageError(trainer::job_manifest_path(job_dir_).string() + ": the job's status is '" +
                                    s.manifest.value("status", "?") + "', not 'trained'; finish it with `lethe train --resume`");
      }
      s.dataset = s.manifest.at("dataset").get<std::string>();
      if (s.manifest.contains("shards") && !s.manifest["shards"].empty()) {
        for (const auto& shard : s.manifest["shards"]) {
          s.plans.push_back(trainer::shard_plan_from_json(shard.at("plan"), "manifest.shards.plan"));
        }
        s.partition = Partition{static_cast<int>(s.plans.size()), s.plans.front().slices};
        s.serving = trainer::load_s3t_serving(job_dir_, s.manifest);
      }
      // Both models predict on top of the frozen backbone.
      s.model = std::make_unique<trainer::LetheModel>(trainer::model_config_from_json(s.manifest.at("model")), 0);
      trainer::load_backbone(*s.model, job_dir_ / s.manifest.value("backbone", "backbone.h5"));
      const auto dataset = storage::Dataset::open(s.dataset);
      s.input_scale = dataset.layout().feature_type == storage::FeatureType::uint8 ? 1.0 / 255.0 : 1.0;
      noisy = s.manifest.contains("noisy_gd");
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  trainer::agree_on_failure(comm, error, "loading the job " + job_dir_.string());
  std::int32_t has_noisy = noisy ? 1 : 0;
  comm.broadcast({&has_noisy, 1, comm::DataType::kInt32}, 0);
  if (has_noisy != 0) {
    state_->share = trainer::load_noisy_gd_share(job_dir_, comm);
    state_->noisy.emplace(trainer::load_job_noisy_gd_model(job_dir_, comm));
  }
}

JobRouter::~JobRouter() = default;

fs::path JobRouter::dataset_path() const { return state_->dataset; }
bool JobRouter::has_s3t() const { return state_->partition.has_value(); }
bool JobRouter::has_noisy_gd() const { return state_->noisy.has_value(); }

storage::Dataset& JobRouter::dataset() const {
  auto& s = *state_;
  if (!s.open_dataset) s.open_dataset.emplace(storage::Dataset::open(s.dataset, /*writable=*/true));
  return *s.open_dataset;
}

std::vector<ResolvedRecord> JobRouter::resolve(const DeletionRequest& request) const {
  return resolve_records(dataset(), request, state_->partition);
}

std::int64_t JobRouter::erase(const std::vector<std::string>& ids) {
  return static_cast<std::int64_t>(storage::erase_records(dataset(), ids).erased.size());
}

std::optional<BatchOutcome> JobRouter::committed_batch_of(const std::string& request_id) const {
  std::lock_guard lock(mutex_);
  const auto& manifest = state_->manifest;
  if (!manifest.contains("last_batch")) return std::nullopt;
  auto outcome = batch_outcome_from_json(manifest["last_batch"]);
  for (const auto& id : outcome.request_ids) {
    if (id == request_id) return outcome;
  }
  return std::nullopt;
}

BatchOutcome JobRouter::apply_batch(const std::vector<ResolvedRecord>& records, const std::vector<std::string>& request_ids) {
  auto& comm = *comm_;
  auto& s = *state_;
  BatchOutcome outcome;
  outcome.request_ids = request_ids;
  std::vector<std::string> ids;
  for (const auto& record : records) {
    if (record.outcome == RecordOutcome::kDelete) ids.push_back(record.id);
  }
  ids = broadcast_strings(comm, ids);
  outcome.records_deleted = static_cast<std::int64_t>(ids.size());

  json manifest;
  std::vector<trainer::ShardPlan> plans;
  std::string error;
  if (comm.rank() == 0) {
    try {
      std::lock_guard lock(mutex_);
      manifest = s.manifest;
      plans = s.plans;
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // S3T: truncate every sequence of the records' shards (rank 0; metadata only).
  if (comm.rank() == 0 && s.partition && !ids.empty()) {
    try {
      const storage::CheckpointStore store(job_dir_ / manifest.value("checkpoints", "checkpoints"));
      std::vector<int> depth_before(plans.size(), 0);
      std::map<int, std::map<int, int>> cut;  // shard -> sequence -> smallest invalidated step
      for (std::size_t k = 0; k < plans.size(); ++k) {
        const auto choice = trainer::serving_choice(plans[k]);
        depth_before[k] = choice ? choice->depth : 0;
      }
      std::map<int, std::vector<int>> before_by_sequence;
      for (const auto& record : records) {
        if (record.outcome != RecordOutcome::kDelete) continue;
        auto& plan = plans.at(static_cast<std::size_t>(record.shard));
        if (before_by_sequence.count(record.shard) == 0) {
          for (const auto& sequence : plan.sequences) before_by_sequence[record.shard].push_back(sequence.surviving_prefix);
        }
        const auto effect = trainer::apply_deletion(plan, record.slice);
        for (const auto& truncation : effect.sequences) {
          auto& step = cut[record.shard][truncation.sequence];
          step = step == 0 ? truncation.slice_position : std::min(step, truncation.slice_position);
        }
      }
      json shards = json::array();
      json retrain_pending = manifest.value("retrain_pending", json::array());
      for (const auto& [k, sequences] : cut) {
        const auto& plan = plans[static_cast<std::size_t>(k)];
        json sequence_effects = json::array();
        for (const auto& [b, first_invalid] : sequences) {
          const auto name = trainer::series_name(k, b);
          json purged = json::array();
          for (const auto& info : store.versions(name)) {
            if (info.metadata.value("prefix", 0) >= first_invalid) {
              outcome.purge.push_back({name, info.version});
              purged.push_back(name + "/v" + std::to_string(info.version));
            }
          }
          sequence_effects.push_back({{"sequence", b},
                                      {"depth_before", before_by_sequence[k][static_cast<std::size_t>(b)]},
                                      {"depth_after", plan.sequences[static_cast<std::size_t>(b)].surviving_prefix},
                                      {"checkpoints_purged", purged}});
        }
        const auto choice = trainer::serving_choice(plan);
        const bool dead = !choice;
        if (dead && std::find(retrain_pending.begin(), retrain_pending.end(), json(k)) == retrain_pending.end()) {
          retrain_pending.push_back(k);
        }
        shards.push_back({{"shard", k},
                          {"sequences", sequence_effects},
                          {"served_depth_before", depth_before[static_cast<std::size_t>(k)]},
                          {"served_depth_after", choice ? choice->depth : 0},
                          {"served_sequence", choice ? json(choice->sequence) : json(nullptr)},
                          {"live", !dead},
                          {"full_retrain_scheduled", dead}});
        manifest["shards"][static_cast<std::size_t>(k)]["plan"] = trainer::shard_plan_to_json(plan);
      }
      manifest["retrain_pending"] = retrain_pending;
      outcome.models.push_back({{"name", "s3t"}, {"route", "slice_deactivation"}, {"shards", shards}});
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // Noisy GD: K_U noisy steps on the remaining data, every rank (collective).
  trainer::agree_on_failure(comm, error, "planning the S3T deletions");
  if (s.noisy && !ids.empty()) {
    const std::unordered_set<std::string> deleted(ids.begin(), ids.end());
    auto remaining = without(s.share, deleted);
    const auto receipt = s.noisy->delete_records(remaining.data);
    s.share = std::move(remaining);
    if (comm.rank() == 0) {
      try {
        const auto previous = storage::CheckpointStore(job_dir_ / "checkpoints").versions(trainer::kNoisyGdSeries);
        const auto info = trainer::commit_noisy_gd_model(*s.noisy, job_dir_, manifest);
        json purged = json::array();
        // Every earlier version was trained with the deleted records.
        for (const auto& old : previous) {
          if (old.version == info.version) continue;
          outcome.purge.push_back({trainer::kNoisyGdSeries, old.version});
          purged.push_back(std::string(trainer::kNoisyGdSeries) + "/v" + std::to_string(old.version));
        }
        auto part = trainer::to_json(receipt);
        part["name"] = "noisy_gd";
        part["route"] = receipt.retrained ? "full_retrain" : "noisy_gd";
        part["version"] = info.version;
        part["checkpoints_purged"] = purged;
        outcome.models.push_back(part);
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
  }
  trainer::agree_on_failure(comm, error, "the noisy-GD deletion");

  // Commit point: the manifest with the new plans, the noisy-GD version and this batch.
  if (comm.rank() == 0) {
    try {
      outcome.model_version = manifest.value("model_version", std::int64_t{0}) + (ids.empty() ? 0 : 1);
      manifest["model_version"] = outcome.model_version;
      manifest["last_batch"] = to_json(outcome);
      trainer::write_job_manifest(job_dir_, manifest);
      // Serving switches to the surviving prefixes; only shards whose choice changed need new checkpoints,
      // but loading the served ones is a few small files, so all are reloaded for simplicity of state.
      auto serving = s.partition && !ids.empty() ? trainer::load_s3t_serving(job_dir_, manifest) : trainer::S3TServing{};
      std::lock_guard lock(mutex_);
      s.manifest = std::move(manifest);
      s.plans = std::move(plans);
      if (s.partition && !ids.empty()) s.serving = std::move(serving);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  trainer::agree_on_failure(comm, error, "committing the batch's manifest");
  return outcome;
}

void JobRouter::forget_in_shares(const std::vector<std::string>& ids) {
  const auto all = broadcast_strings(*comm_, ids);
  if (state_->noisy && !all.empty()) state_->share = without(state_->share, {all.begin(), all.end()});
}

void JobRouter::purge(const std::vector<PurgeTarget>& targets) const {
  storage::CheckpointStore store(job_dir_ / "checkpoints");
  std::map<std::string, std::vector<int>> by_series;
  for (const auto& target : targets) by_series[target.series].push_back(target.version);
  for (const auto& [series, versions] : by_series) store.purge(series, versions);
}

std::int64_t JobRouter::model_version() const {
  std::lock_guard lock(mutex_);
  return state_->manifest.value("model_version", std::int64_t{0});
}

std::vector<int> JobRouter::live_depths() const {
  std::lock_guard lock(mutex_);
  std::vector<int> depths;
  for (const auto& plan : state_->plans) {
    const auto choice = trainer::serving_choice(plan);
    depths.push_back(choice ? choice->depth : 0);
  }
  return depths;
}

json models_json(const fs::path& job_dir, const json& manifest) {
  json models = json::array();
  const auto version = manifest.value("model_version", std::int64_t{0});
  if (manifest.contains("shards") && !manifest["shards"].empty()) {
    json shards = json::array();
    int live = 0;
    int slices = 0;
    for (std::size_t k = 0; k < manifest["shards"].size(); ++k) {
      const auto plan = trainer::shard_plan_from_json(manifest["shards"][k].at("plan"), "manifest.shards.plan");
      slices = plan.slices;
      const auto choice = trainer::serving_choice(plan);
      json sequences = json::array();
      for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
        sequences.push_back({{"sequence", b}, {"surviving_prefix", plan.sequences[b].surviving_prefix}});
      }
      live += choice ? 1 : 0;
      shards.push_back({{"shard", k},
                        {"live", choice.has_value()},
                        {"served_sequence", choice ? json(choice->sequence) : json(nullptr)},
                        {"depth", choice ? choice->depth : 0},
                        {"sequences", sequences}});
    }
    models.push_back({{"name", "s3t"},
                      {"route", "slice_deactivation"},
                      {"version", version},
                      {"slices", slices},
                      {"live_shards", live},
                      {"shards", shards},
                      {"retrain_pending", manifest.value("retrain_pending", json::array())}});
  }
  if (manifest.contains("noisy_gd")) {
    const auto& noisy = manifest["noisy_gd"];
    models.push_back({{"name", "noisy_gd"},
                      {"route", "noisy_gd"},
                      {"version", noisy.value("version", 0)},
                      {"records", noisy.value("records", std::int64_t{0})},
                      {"steps_taken", noisy.value("steps_taken", std::int64_t{0})}});
  }
  return {{"job_dir", job_dir.string()}, {"model_version", version}, {"models", models}};
}

json JobRouter::models_json() const {
  std::lock_guard lock(mutex_);
  return deletion::models_json(job_dir_, state_->manifest);
}

json JobRouter::predict(const json& body) const {
  if (!body.is_object() || !body.contains("inputs")) throw RequestError("inputs", "required: a list of feature rows");
  for (const auto& [key, value] : body.items()) {
    if (key != "inputs" && key != "model") throw RequestError(key, "unknown field; expected \"inputs\" or \"model\"");
  }
  std::lock_guard lock(mutex_);
  auto& s = *state_;
  std::string model = body.value("model", s.partition ? "s3t" : "noisy_gd");
  if (model != "s3t" && model != "noisy_gd") throw RequestError("model", "must be \"s3t\" or \"noisy_gd\"");
  if ((model == "s3t" && !s.partition) || (model == "noisy_gd" && !s.noisy)) {
    throw RequestError("model", "this job has no " + model + " model");
  }
  const auto& config = s.model->config();
  const auto width = config.input_channels * config.input_height * config.input_width;
  const auto& inputs = body.at("inputs");
  if (!inputs.is_array() || inputs.empty()) throw RequestError("inputs", "must be a non-empty list of feature rows");
  if (inputs.size() > 1024) throw RequestError("inputs", "at most 1024 rows per request");
  std::vector<float> values;
  values.reserve(inputs.size() * static_cast<std::size_t>(width));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto field = "inputs[" + std::to_string(i) + "]";
    if (!inputs[i].is_array() || inputs[i].size() != static_cast<std::size_t>(width)) {
      throw RequestError(field, "must hold " + std::to_string(width) + " numbers (the dataset's feature values)");
    }
    for (const auto& v : inputs[i]) {
      if (!v.is_number()) throw RequestError(field, "must hold numbers only");
      values.push_back(static_cast<float>(v.get<double>() * s.input_scale));
    }
  }
  const auto n = static_cast<std::int64_t>(inputs.size());
  const auto x = torch::tensor(values, torch::kFloat32).reshape({n, config.input_channels, config.input_height, config.input_width});
  torch::Tensor probabilities;
  if (model == "s3t") {
    if (s.serving.members.empty()) throw ModelUnavailable(
          "the S3T ensemble has no live shard: deletions cut every sequence of every shard before its first slice. "
          "Stop the service and run `lethe retrain --job " + job_dir_.string() + "`, or predict with \"model\": \"noisy_gd\"");
    probabilities = trainer::ensemble_probabilities(*s.model, s.serving.members, x, 1024);
  } else {
    torch::NoGradGuard no_grad;
    probabilities = torch::softmax(trainer::noisy_gd_features(*s.model, x, 1024).matmul(s.noisy->weights()), 1);
  }
  json predictions = json::array();
  const auto classes = probabilities.argmax(1);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto row = probabilities[i].to(torch::kFloat64).contiguous();
    predictions.push_back({{"class", classes[i].item<std::int64_t>()},
                           {"probabilities", std::vector<double>(row.data_ptr<double>(), row.data_ptr<double>() + row.numel())}});
  }
  return {{"model", model}, {"model_version", s.manifest.value("model_version", std::int64_t{0})}, {"predictions", predictions}};
}

}  // namespace lethe::deletion
