// trainer/routes.h — the registered deletion routes. Each model family is one file pair in trainer/
// (its ModelRoute and how it trains) plus one entry in routes.cpp; everything generic (train,
// serve, delete, eval, status, retrain) iterates over this list and names no model.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "trainer/job_manifest.h"
#include "trainer/job_retrain.h"
#include "trainer/job_settings.h"
#include "trainer/model_route.h"

namespace lethe::trainer {

struct RouteAdoption {
  nlohmann::json section;
  std::vector<PurgeTarget> purge;
  nlohmann::json report;  // what forgetting the records deleted meanwhile did
};

struct RouteKind {
  std::string_view name;
  // Whether a job with these settings trains this model.
  bool (*configured)(const JobSettings& settings);
  // Collective. Trains the model into settings.job_dir (prepared by prepare_job_dir, under the job
  // lock) and commits its manifest section. `resume`: continue a run that was interrupted.
  // Returns its part of `lethe train`'s JSON report.
  nlohmann::json (*train)(const JobSettings& settings, comm::Communicator& comm, bool resume);
  // The checks of the inputs this model trains on beyond the generic ones (trainer/job.h
  // check_job_inputs), without writing anything; throws the errors training would. Returns a
  // summary for `lethe validate`.
  nlohmann::json (*check_inputs)(const JobSettings& settings, const storage::Dataset& dataset);
  // Collective. The route of a job whose manifest holds its section.
  std::unique_ptr<ModelRoute> (*load)(const RouteContext& context);
  // Its GET /v1/models entry from the manifest alone (no model is loaded: `lethe status` runs
  // beside a service).
  nlohmann::json (*describe)(const JobManifest& manifest, const nlohmann::json& section);
  // Collective, optional (null: deletions never leave this model in need of one). Restores the
  // model to full strength on the records the snapshot left live, writing only new checkpoint
  // series (never what the manifest serves). Returns (rank 0) {"section": the section it proposes,
  // "report": {..., "retrained": bool}}.
  nlohmann::json (*retrain)(const JobManifest& manifest, const RetrainSnapshot& snapshot, const std::string& id,
                            comm::Communicator& comm) = nullptr;
  // Rank 0, with retrain: the section to commit when adopting `result` into `current`, after
  // forgetting `deleted_ids` (records deleted since the retrain's snapshot) through the route, and
  // the checkpoints the adoption leaves behind (to purge once committed).
  RouteAdoption (*adopt)(const JobManifest& current, const nlohmann::json& result, const std::vector<std::string>& deleted_ids,
                         const storage::Dataset& dataset) = nullptr;
};

// Every registered route, in the order receipts, /v1/models and `lethe eval` list them.
[[nodiscard]] std::span<const RouteKind> route_kinds();
// nullptr for an unknown name.
[[nodiscard]] const RouteKind* find_route_kind(std::string_view name);

// Collective. The routes of every section the manifest holds, in registry order. TrainerError
// (kDamaged) for a section no registered route reads.
[[nodiscard]] std::vector<std::shared_ptr<const ModelRoute>> load_routes(const RouteContext& context);
// The "models" array of GET /v1/models from the manifest alone.
[[nodiscard]] nlohmann::json describe_routes(const JobManifest& manifest);

}  // namespace lethe::trainer
