// trainer/model_route.h — what a deletable model does (DESIGN.md §1): the one interface of a
// deletion route, implemented once per route in trainer/ (S3T slice deactivation, noisy GD) and
// registered in trainer/routes.cpp. The coordinator (deletion/) holds a list of routes and knows no
// model by name. tests/trainer/test_route_conformance.cpp defines "done" for a route; docs/JOB.md
// states the contract.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"

namespace lethe::storage {
class Dataset;  // storage/dataset.h
}  // namespace lethe::storage

namespace lethe::trainer {

class FrozenBackbone;  // trainer/frozen_backbone.h
class ModelRoute;

// What a route loads from. Every rank gets the same manifest (rank 0 read and verified it).
struct RouteContext {
  const JobManifest& manifest;
  comm::Communicator& comm;
  std::shared_ptr<FrozenBackbone> backbone;  // the job's frozen backbone, digest checked
  const storage::Dataset& dataset;           // the job's dataset, identity checked (read-only use)
  // Load what applying deletions needs (e.g. every rank's share of the training records' features);
  // false to predict and evaluate only.
  bool for_deletion = false;
};

// The records of one deletion batch, the same on every rank: live, non-public records every
// model forgets. Rows are the records' rows in the job's dataset, in the order of `ids`.
struct DeletionBatch {
  std::vector<std::string> ids;
  std::vector<std::uint64_t> rows;
};

// A route's response to a batch, computed but not yet visible: the batch commits it by writing
// `section` into the manifest, then swaps `next` in; otherwise it calls `discard`.
struct RouteChange {
  std::shared_ptr<const ModelRoute> next;  // the route after the deletion (every rank)
  nlohmann::json section;                  // its manifest section (rank 0)
  nlohmann::json receipt;                  // its receipt part: {"name", "route", ...} (rank 0)
  std::vector<PurgeTarget> purge;          // checkpoint versions that carry a deleted record (rank 0)
  // Rank 0: removes what was written for `next` (e.g. a new checkpoint version) when the batch is
  // not committed. Empty when nothing was written.
  std::function<void()> discard;
};

// What a retrain must redo to bring the model back to full strength.
struct RetrainNeed {
  bool needed = false;
  std::string reason;                               // for people: "3 of 4 shards dead"
  nlohmann::json detail = nlohmann::json::object();  // machine-readable, route-specific
  int live = 0;             // parts of the model still serving (S3T: live shards)
  int parts = 0;            // parts it has in all
  double strength = 1.0;    // 0..1: how much of the model serves (S3T: mean served depth / L)
};

// One Prometheus gauge sample: `name{labels} value`.
struct Gauge {
  std::string name;  // lethe_<route>_<what>
  std::string help;
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
};

class ModelRoute {
 public:
  virtual ~ModelRoute() = default;

  // The route's name: its manifest section, its receipt part and `model` of POST /v1/predict.
  [[nodiscard]] virtual std::string_view name() const = 0;

  // Collective. The route's response to deleting `batch`, computed on copies: this route, its
  // files and the manifest are left as they were. All-or-nothing: on failure it throws on every
  // rank (comm/agree.h) after removing whatever it wrote, so that a retry is exact.
  [[nodiscard]] virtual RouteChange prepare_deletion(const DeletionBatch& batch) const = 0;

  // Rank 0, any thread. Class probabilities [N, classes] (floating point, CPU) of model inputs
  // [N, C, H, W] (trainer/model_inputs.h). TrainerError kUnavailable when it cannot answer now.
  [[nodiscard]] virtual at::Tensor predict(const at::Tensor& inputs) const = 0;

  // Rank 0. Its entry of `lethe eval` next to "name" and "accuracy". (GET /v1/models and
  // `lethe status` describe a route from its manifest section alone: RouteKind::describe.)
  [[nodiscard]] virtual nlohmann::json eval_details() const = 0;
  // Rank 0. Facts about one deleted record for its receipt entry (S3T: its shard and slice).
  virtual void describe_record(std::string_view /*id*/, nlohmann::json& /*entry*/) const {}
  // What `lethe retrain` would redo.
  [[nodiscard]] virtual RetrainNeed retrain_need() const = 0;
  // Rank 0. The route's gauges for GET /metrics (S3T: the served depth per shard).
  [[nodiscard]] virtual std::vector<Gauge> gauges() const { return {}; }
};

}  // namespace lethe::trainer
