#include "deletion/job_router.h"

#include <spdlog/spdlog.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <torch/torch.h>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/erasure.h"
#include "trainer/frozen_backbone.h"
#include "trainer/job.h"
#include "trainer/job_retrain.h"
#include "trainer/model_inputs.h"
#include "trainer/routes.h"

namespace lethe::deletion {

namespace fs = std::filesystem;
using nlohmann::json;

// What predictions read: the committed manifest (rank 0) and the routes, swapped whole by a batch.
struct JobRouter::Snapshot {
  std::shared_ptr<const trainer::JobManifest> manifest;
  std::vector<std::shared_ptr<const trainer::ModelRoute>> routes;
};

struct JobRouter::DatasetHolder {
  fs::path path;
  storage::FeatureType feature_type = storage::FeatureType::uint8;
  std::optional<storage::Dataset> open;  // writable, opened at the first use
};

namespace {

// At most this many rows per prediction request (docs/API.md).
constexpr std::size_t kMaxPredictRows = 1024;

std::string route_names() {
  std::string names;
  for (const auto& kind : trainer::route_kinds()) names += (names.empty() ? "\"" : ", \"") + std::string(kind.name) + "\"";
  return names;
}

}  // namespace

std::string feature_value_problem(double value, storage::FeatureType type) {
  if (type == storage::FeatureType::uint8) {
    if (value >= 0 && value <= 255) return {};  // false for NaN
    return "is " + fmt::format("{}", value) + "; this dataset's values are pixels from 0 to 255";
  }
  if (std::isfinite(value) && std::abs(value) <= std::numeric_limits<float>::max()) return {};
  return "is " + fmt::format("{}", value) + "; this dataset's values are finite float32 numbers (at most " +
         fmt::format("{:g}", std::numeric_limits<float>::max()) + " in magnitude)";
}

json models_json(const trainer::JobManifest& manifest) {
  return {{"job_dir", manifest.dir.string()},
          {"model_version", manifest.model_version},
          {"models", trainer::describe_routes(manifest)},
          {"retrain", trainer::describe_retrains(manifest)}};
}

JobRouter::JobRouter(fs::path job_dir, comm::Communicator& comm)
    : job_dir_(std::move(job_dir)), comm_(&comm), dataset_(std::make_unique<DatasetHolder>()) {
  auto manifest = std::make_shared<trainer::JobManifest>(trainer::open_trained_job(job_dir_, comm));
  // A retrain adopted by a process that ended before purging what the old models left: finish it.
  comm::on_root(comm, "finishing an earlier retrain's adoption", [&] { trainer::finish_adoption(*manifest); });
  auto loaded = trainer::load_job_routes(*manifest, comm, /*for_deletion=*/true);
  backbone_ = loaded.backbone;
  dataset_->path = manifest->dataset.path;
  comm::on_root(comm, "reading the job's dataset layout", [&] {
    dataset_->feature_type = storage::Dataset::open(dataset_->path).layout().feature_type;
  });
  auto snapshot = std::make_shared<Snapshot>();
  snapshot->manifest = std::move(manifest);
  snapshot->routes = std::move(loaded.routes);
  snapshot_ = std::move(snapshot);
}

JobRouter::~JobRouter() = default;

std::shared_ptr<const JobRouter::Snapshot> JobRouter::current() const {
  std::lock_guard lock(snapshot_mutex_);
  return snapshot_;
}

storage::Dataset& JobRouter::dataset() const {
  auto& holder = *dataset_;
  if (!holder.open) holder.open.emplace(storage::Dataset::open(holder.path, /*writable=*/true));
  return *holder.open;
}

const std::filesystem::path& JobRouter::dataset_path() const { return dataset_->path; }

std::vector<ResolvedRecord> JobRouter::resolve(const DeletionRequest& request) const {
  return resolve_records(dataset(), request);
}

std::int64_t JobRouter::erase(const std::vector<std::string>& ids) {
  return static_cast<std::int64_t>(storage::erase_records(dataset(), ids).erased.size());
}

std::optional<BatchOutcome> JobRouter::committed_batch_of(const std::string& request_id) const {
  const auto snapshot = current();
  const auto& last = snapshot->manifest->last_batch;
  if (!last) return std::nullopt;
  for (const auto& id : last->request_ids) {
    if (id == request_id) return last;
  }
  return std::nullopt;
}

BatchOutcome JobRouter::apply_batch(const std::vector<ResolvedRecord>& records, const std::vector<std::string>& request_ids,
                                    std::vector<std::pair<std::string, double>>* phases) {
  auto lap_start = std::chrono::steady_clock::now();
  const auto lap = [&](const std::string& phase) {
    const auto now = std::chrono::steady_clock::now();
    if (phases != nullptr) phases->emplace_back(phase, std::chrono::duration<double>(now - lap_start).count());
    lap_start = now;
  };
  auto& comm = *comm_;
  const auto snapshot = current();
  trainer::DeletionBatch batch;
  for (const auto& record : records) {
    if (record.outcome != RecordOutcome::kDelete) continue;
    batch.ids.push_back(record.id);
    batch.rows.push_back(*record.row);
  }
  batch.ids = comm::broadcast_strings(comm, batch.ids);
  batch.rows = comm::broadcast_u64s(comm, batch.rows);

  BatchOutcome outcome;
  outcome.request_ids = request_ids;
  outcome.records_deleted = static_cast<std::int64_t>(batch.ids.size());
  outcome.erase_rows = batch.rows;
  std::vector<trainer::RouteChange> changes;
  const auto discard = [&] {
    for (auto& change : changes) {
      if (!change.discard) continue;
      try {
        change.discard();
      } catch (const std::exception& e) {
        spdlog::error("discarding a route's uncommitted files: {}", e.what());
      }
    }
  };
  std::shared_ptr<trainer::JobManifest> next_manifest;
  auto next = std::make_shared<Snapshot>();
  try {
    // Every route's change, on copies (each route agrees on its own failures over the ranks).
    for (const auto& route : snapshot->routes) {
      changes.push_back(route->prepare_deletion(batch));
      lap("route:" + std::string(route->name()));
    }
    // Every rank holds its next state before rank 0 commits: a rank that cannot vetoes the batch
    // here, while it can still be abandoned everywhere.
    comm::on_every_rank(comm, "readying the batch's routes", [&] {
      for (const auto& change : changes) next->routes.push_back(change.next);
    });
    // Commit point: the manifest with every route's new section and this batch.
    comm::on_root(comm, "committing the batch's manifest", [&] {
      auto manifest = std::make_shared<trainer::JobManifest>(*snapshot->manifest);
      for (std::size_t i = 0; i < changes.size(); ++i) {
        manifest->routes[std::string(snapshot->routes[i]->name())] = changes[i].section;
        if (!batch.ids.empty()) outcome.models.push_back(changes[i].receipt);
        outcome.purge.insert(outcome.purge.end(), changes[i].purge.begin(), changes[i].purge.end());
      }
      outcome.model_version = manifest->model_version + (batch.ids.empty() ? 0 : 1);
      manifest->model_version = outcome.model_version;
      // What the dataset will hold once this batch's rows are erased (after the commit).
      manifest->dataset.digest = dataset().content_digest(batch.rows);
      manifest->last_batch = outcome;
      trainer::commit_job_manifest(*manifest);
      next_manifest = std::move(manifest);
    });
    lap("commit");
  } catch (...) {
    if (comm.rank() == 0) discard();
    throw;
  }
  // The swap: nothing below can fail, so memory follows the committed manifest.
  next->manifest = next_manifest ? next_manifest : snapshot->manifest;
  {
    std::lock_guard lock(snapshot_mutex_);
    snapshot_ = std::move(next);
  }
  return outcome;
}

std::int64_t JobRouter::adopt_retrain(const trainer::RetrainRun* run) {
  auto& comm = *comm_;
  const auto snapshot = current();
  std::optional<trainer::Adoption> adoption;
  std::string planned;
  comm::on_root(comm, "planning the retrain's adoption", [&] {
    adoption = trainer::plan_adoption(*snapshot->manifest, *run, dataset());
    json message = {{"manifest", trainer::encode_job_manifest(adoption->next)}, {"retrained", json::array()}};
    for (const auto& [name, result] : run->routes.items()) message["retrained"].push_back(name);
    planned = message.dump();
  });
  // Rank 0 decides which routes are reloaded: only its copy of the manifest is authoritative.
  const auto message = json::parse(comm::broadcast_string(comm, planned));
  auto next_manifest = std::make_shared<trainer::JobManifest>(trainer::decode_job_manifest(message.at("manifest"), job_dir_));
  const auto retrained_routes = message.at("retrained").get<std::vector<std::string>>();
  // The retrained routes, loaded from the planned manifest before anything is committed.
  std::optional<storage::Dataset> reader;
  comm::on_every_rank(comm, "opening the dataset", [&] {
    if (comm.rank() != 0) reader.emplace(storage::Dataset::open(dataset_->path));
  });
  const storage::Dataset& data = comm.rank() == 0 ? dataset() : *reader;
  auto next = std::make_shared<Snapshot>();
  for (const auto& route : snapshot->routes) {
    const auto name = std::string(route->name());
    const bool retrained = std::find(retrained_routes.begin(), retrained_routes.end(), name) != retrained_routes.end();
    next->routes.push_back(retrained ? std::shared_ptr<const trainer::ModelRoute>(trainer::find_route_kind(name)->load(
                                           trainer::RouteContext{*next_manifest, comm, backbone_, data, true}))
                                     : route);
  }
  comm::on_root(comm, "committing the retrain's adoption", [&] { trainer::commit_job_manifest(adoption->next); });
  next->manifest = next_manifest;
  if (comm.rank() == 0) next_manifest->generation = adoption->next.generation;
  {
    std::lock_guard lock(snapshot_mutex_);
    snapshot_ = std::move(next);
  }
  if (comm.rank() != 0) return 0;
  try {
    trainer::finish_adoption(adoption->next);
  } catch (const std::exception& e) {
    // Idempotent: retried at the next pending_retrain() (every heartbeat), and at the next start.
    unfinished_adoption_ = true;
    spdlog::error("retrain {} adopted, but finishing it failed: {}; retried", run->id, e.what());
  }
  spdlog::info("adopted retrain {}: model version {}", run->id, adoption->next.model_version);
  return adoption->next.model_version;
}

std::optional<trainer::RetrainRun> JobRouter::pending_retrain() const {
  const auto manifest = current()->manifest;
  if (unfinished_adoption_) {
    trainer::finish_adoption(*manifest);  // throws again while it still fails
    unfinished_adoption_ = false;
  }
  return trainer::pending_retrain(*manifest);
}

json JobRouter::retrains() const { return trainer::describe_retrains(*current()->manifest); }

std::vector<trainer::RetrainNeed> JobRouter::retrain_needs() const {
  std::vector<trainer::RetrainNeed> needs;
  for (const auto& route : current()->routes) needs.push_back(route->retrain_need());
  return needs;
}

void JobRouter::purge(const std::vector<PurgeTarget>& targets) const {
  storage::CheckpointStore store(current()->manifest->checkpoints_path());
  std::map<std::string, std::vector<int>> by_series;
  for (const auto& target : targets) by_series[target.series].push_back(target.version);
  for (const auto& [series, versions] : by_series) store.purge(series, versions);
}

std::int64_t JobRouter::model_version() const { return current()->manifest->model_version; }

trainer::JobSettings JobRouter::settings() const { return current()->manifest->config; }

json JobRouter::models_json() const { return deletion::models_json(*current()->manifest); }

void JobRouter::describe_record(const std::string& id, json& entry) const {
  for (const auto& route : current()->routes) route->describe_record(id, entry);
}

std::vector<trainer::Gauge> JobRouter::gauges() const {
  std::vector<trainer::Gauge> out;
  for (const auto& route : current()->routes) {
    auto gauges = route->gauges();
    out.insert(out.end(), gauges.begin(), gauges.end());
  }
  return out;
}

std::int64_t JobRouter::values_per_record() const {
  const auto& config = current()->manifest->model;
  return config.input_channels * config.input_height * config.input_width;
}

storage::FeatureType JobRouter::feature_type() const { return dataset_->feature_type; }

JobRouter::Prediction JobRouter::predict_rows(const std::string& model, const at::Tensor& values) const {
  const auto snapshot = current();
  std::shared_ptr<const trainer::ModelRoute> route = snapshot->routes.front();
  if (!model.empty()) {
    if (trainer::find_route_kind(model) == nullptr) throw RequestError("model", "must be one of " + route_names());
    const auto it = std::find_if(snapshot->routes.begin(), snapshot->routes.end(),
                                 [&](const auto& r) { return r->name() == model; });
    if (it == snapshot->routes.end()) throw RequestError("model", "this job has no " + model + " model");
    route = *it;
  }
  const auto& manifest = *snapshot->manifest;
  auto probabilities = route->predict(trainer::to_model_inputs(values, dataset_->feature_type, manifest.model));
  return {std::string(route->name()), manifest.model_version, probabilities.to(torch::kFloat32).contiguous()};
}

json JobRouter::predict(const json& body) const {
  if (!body.is_object() || !body.contains("inputs")) throw RequestError("inputs", "required: a list of feature rows");
  for (const auto& [key, value] : body.items()) {
    if (key != "inputs" && key != "model") throw RequestError(key, "unknown field; expected \"inputs\" or \"model\"");
  }
  std::string model;
  if (body.contains("model")) {
    if (!body["model"].is_string()) throw RequestError("model", "must be a string: one of " + route_names());
    model = body["model"].get<std::string>();
  }
  const auto width = static_cast<std::size_t>(values_per_record());
  const auto& inputs = body.at("inputs");
  if (!inputs.is_array() || inputs.empty()) throw RequestError("inputs", "must be a non-empty list of feature rows");
  if (inputs.size() > kMaxPredictRows) {
    throw RequestError("inputs", "at most " + std::to_string(kMaxPredictRows) +
                                     " rows per request (send larger batches as application/octet-stream, docs/API.md)");
  }
  std::vector<double> values;
  values.reserve(inputs.size() * width);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto field = "inputs[" + std::to_string(i) + "]";
    if (!inputs[i].is_array() || inputs[i].size() != width) {
      throw RequestError(field, "must hold " + std::to_string(width) + " numbers (the dataset's feature values)");
    }
    for (std::size_t j = 0; j < width; ++j) {
      const auto& v = inputs[i][j];
      if (!v.is_number()) throw RequestError(field + "[" + std::to_string(j) + "]", "must be a number");
      const auto value = v.get<double>();
      if (auto problem = feature_value_problem(value, feature_type()); !problem.empty()) {
        throw RequestError(field + "[" + std::to_string(j) + "]", problem);
      }
      values.push_back(value);
    }
  }
  const auto n = static_cast<std::int64_t>(inputs.size());
  const auto raw = torch::from_blob(values.data(), {n, static_cast<std::int64_t>(width)}, torch::kFloat64);
  const auto prediction = predict_rows(model, raw);
  const auto& probabilities = prediction.probabilities;
  json predictions = json::array();
  const auto classes = probabilities.argmax(1);
  for (std::int64_t i = 0; i < n; ++i) {
    const float* row = probabilities[i].data_ptr<float>();
    predictions.push_back({{"class", classes[i].item<std::int64_t>()},
                           {"probabilities", std::vector<double>(row, row + probabilities.size(1))}});
  }
  return {{"model", prediction.model}, {"model_version", prediction.model_version}, {"predictions", predictions}};
}

}  // namespace lethe::deletion
