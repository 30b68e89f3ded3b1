#include "trainer/job_retrain.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "storage/job_lock.h"
#include "trainer/error.h"
#include "trainer/json_fields.h"
#include "trainer/routes.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

RetrainStatus status_from(const std::string& text, const JsonFields& f) {
  for (const auto status : {RetrainStatus::kRunning, RetrainStatus::kTrained, RetrainStatus::kAdopted,
                            RetrainStatus::kFailed, RetrainStatus::kNothingToDo}) {
    if (to_string(status) == text) return status;
  }
  f.fail("status", "'" + text + "' is not a retrain status");
}

RetrainRun decode(const json& j, const std::string& origin) {
  const JsonFields f(j, origin);
  RetrainRun run;
  run.id = f.get<std::string>("id");
  run.status = status_from(f.get<std::string>("status"), f);
  run.pid = f.get<std::int64_t>("pid");
  run.ranks = f.get<int>("ranks");
  run.started_ms = f.get<std::int64_t>("started_ms");
  run.finished_ms = f.get<std::int64_t>("finished_ms");
  run.adopted_ms = f.get<std::int64_t>("adopted_ms");
  run.model_version = f.get<std::int64_t>("model_version");
  const auto snapshot = f.child("snapshot");
  run.snapshot = {snapshot.get<std::uint64_t>("generation"), snapshot.get<std::vector<std::uint64_t>>("excluded_rows")};
  run.config_digest = f.get<std::string>("config_digest");
  run.dataset_uuid = f.get<std::string>("dataset_uuid");
  run.routes = f.raw("routes");
  run.adoption = f.raw("adoption");
  run.error = f.get<std::string>("error");
  return run;
}

// The rows the job's dataset holds erased now, and those the last committed batch will erase.
std::vector<std::uint64_t> excluded_rows(const JobManifest& manifest, const storage::Dataset& dataset) {
  std::set<std::uint64_t> rows;
  for (std::uint64_t row = 0; row < dataset.size(); ++row) {
    if (dataset.is_tombstoned(row)) rows.insert(row);
  }
  if (manifest.last_batch) rows.insert(manifest.last_batch->erase_rows.begin(), manifest.last_batch->erase_rows.end());
  return {rows.begin(), rows.end()};
}

}  // namespace

std::string_view to_string(RetrainStatus status) {
  switch (status) {
    case RetrainStatus::kRunning: return "running";
    case RetrainStatus::kTrained: return "trained";
    case RetrainStatus::kAdopted: return "adopted";
    case RetrainStatus::kFailed: return "failed";
    case RetrainStatus::kNothingToDo: return "nothing_to_do";
  }
  return "unknown";
}

json to_json(const RetrainRun& run) {
  return {{"id", run.id},
          {"status", std::string(to_string(run.status))},
          {"pid", run.pid},
          {"ranks", run.ranks},
          {"started_ms", run.started_ms},
          {"finished_ms", run.finished_ms},
          {"adopted_ms", run.adopted_ms},
          {"model_version", run.model_version},
          {"snapshot", {{"generation", run.snapshot.generation}, {"excluded_rows", run.snapshot.excluded_rows}}},
          {"config_digest", run.config_digest},
          {"dataset_uuid", run.dataset_uuid},
          {"routes", run.routes},
          {"adoption", run.adoption},
          {"error", run.error}};
}

fs::path retrain_dir(const fs::path& job_dir) { return job_dir / "retrain"; }

void write_retrain_run(const fs::path& job_dir, const RetrainRun& run) {
  fs::create_directories(retrain_dir(job_dir));
  storage::write_file_durably(retrain_dir(job_dir) / (run.id + ".json"), to_json(run).dump(2) + "\n");
}

std::vector<RetrainRun> list_retrain_runs(const fs::path& job_dir) {
  std::vector<RetrainRun> runs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(retrain_dir(job_dir), ec)) {
    const auto& path = entry.path();
    if (path.extension() != ".json" || !entry.is_regular_file()) continue;
    json j;
    try {
      j = json::parse(std::ifstream(path));
    } catch (const json::exception& e) {
      throw TrainerError(ErrorKind::kDamaged, path.string() + " is not valid JSON (" + e.what() +
                                                  "); remove it if no retrain of that id runs");
    }
    runs.push_back(decode(j, path.string()));
  }
  std::sort(runs.begin(), runs.end(), [](const auto& a, const auto& b) { return a.started_ms < b.started_ms; });
  return runs;
}

std::optional<RetrainRun> find_retrain_run(const fs::path& job_dir, const std::string& id) {
  for (auto& run : list_retrain_runs(job_dir)) {
    if (run.id == id) return std::move(run);
  }
  return std::nullopt;
}

std::string new_retrain_id(const fs::path& job_dir) {
  for (;;) {
    unsigned char bytes[6];
    if (RAND_bytes(bytes, sizeof bytes) != 1) throw TrainerError(ErrorKind::kDamaged, "OpenSSL's random generator failed");
    static constexpr char kHex[] = "0123456789abcdef";
    std::string id;
    for (const auto b : bytes) {
      id += kHex[b >> 4];
      id += kHex[b & 0xf];
    }
    if (!fs::exists(retrain_dir(job_dir) / (id + ".json"))) return id;
  }
}

namespace {

std::int64_t adopted_start(const JobManifest& manifest) {
  return manifest.last_retrain ? manifest.last_retrain->details.value("started_ms", std::int64_t{0}) : 0;
}

// A trained run older than the adopted one: its snapshot is older, it will never be adopted.
bool superseded(const RetrainRun& run, const JobManifest& manifest) {
  return run.status == RetrainStatus::kTrained && run.started_ms < adopted_start(manifest);
}

// Purges the checkpoints of every run `drop` selects (each series it wrote ends in -r<id>,
// RouteKind::retrain's contract) and records it failed with `why(run)` unless it already is.
template <typename Drop, typename Why>
void drop_runs(const JobManifest& manifest, Drop drop, Why why) {
  storage::CheckpointStore store(manifest.checkpoints_path());
  std::vector<std::string> series;
  for (auto& run : list_retrain_runs(manifest.dir)) {
    if (!drop(run)) continue;
    if (series.empty()) series = store.names();
    const auto suffix = "-r" + run.id;
    for (const auto& name : series) {
      if (name.ends_with(suffix) && !store.versions(name).empty()) store.purge_all(name);
    }
    if (run.status != RetrainStatus::kFailed) {
      run.error = why(run);
      run.status = RetrainStatus::kFailed;
      write_retrain_run(manifest.dir, run);
    }
  }
}

constexpr const char* kSupersededError = "superseded by a retrain adopted later; its checkpoints were purged";

}  // namespace

void abandon_interrupted_retrains(const JobManifest& manifest) {
  drop_runs(
      manifest,
      [&](const RetrainRun& run) {
        return run.status == RetrainStatus::kRunning || run.status == RetrainStatus::kFailed || superseded(run, manifest);
      },
      [](const RetrainRun& run) {
        return run.status == RetrainStatus::kRunning
                   ? std::string("interrupted: its process ended before it finished; its checkpoints were purged")
                   : std::string(kSupersededError);
      });
}

RetrainRun run_retrain(const JobManifest& manifest, const std::string& id, comm::Communicator& comm) {
  RetrainRun run;
  comm::on_root(comm, "recording the retrain", [&] {
    abandon_interrupted_retrains(manifest);
    const auto dataset = storage::Dataset::open(manifest.dataset.path);
    run.id = id;
    run.pid = ::getpid();
    run.ranks = comm.size();
    run.started_ms = now_ms();
    run.snapshot = {manifest.generation, excluded_rows(manifest, dataset)};
    run.config_digest = manifest.config_digest;
    run.dataset_uuid = manifest.dataset.uuid;
    write_retrain_run(manifest.dir, run);
  });
  run.snapshot.excluded_rows = comm::broadcast_u64s(comm, run.snapshot.excluded_rows);
  try {
    bool retrained = false;
    for (const auto& kind : route_kinds()) {
      if (kind.retrain == nullptr || manifest.section(kind.name) == nullptr) continue;
      auto result = kind.retrain(manifest, run.snapshot, id, comm);
      retrained = retrained || result.at("report").value("retrained", false);
      run.routes[std::string(kind.name)] = std::move(result);
    }
    comm::on_root(comm, "recording the retrain's result", [&] {
      run.status = retrained ? RetrainStatus::kTrained : RetrainStatus::kNothingToDo;
      run.finished_ms = now_ms();
      write_retrain_run(manifest.dir, run);
    });
  } catch (const std::exception& e) {
    if (comm.rank() == 0) {
      run.status = RetrainStatus::kFailed;
      run.finished_ms = now_ms();
      run.error = e.what();
      try {
        write_retrain_run(manifest.dir, run);
      } catch (const std::exception& again) {
        spdlog::error("retrain {}: cannot record the failure: {}", id, again.what());
      }
    }
    throw;
  }
  return run;
}

json describe_retrains(const JobManifest& manifest) {
  json in_progress = json::array();
  std::optional<bool> lock_held;  // probed once, when a run says it is training
  for (const auto& run : list_retrain_runs(manifest.dir)) {
    if (run.status == RetrainStatus::kRunning) {
      if (!lock_held) lock_held = storage::JobLock::holder(manifest.dir, storage::JobLock::Kind::kRetrain).has_value();
      if (!*lock_held) continue;
    } else if (run.status != RetrainStatus::kTrained) {
      continue;
    }
    in_progress.push_back({{"id", run.id},
                           {"phase", run.status == RetrainStatus::kTrained ? "adopting" : "training"},
                           {"started_ms", run.started_ms},
                           {"pid", run.pid}});
  }
  json last = nullptr;
  if (manifest.last_retrain) {
    const auto& details = manifest.last_retrain->details;
    last = {{"id", details.value("id", std::string())},
            {"started_ms", details.value("started_ms", std::int64_t{0})},
            {"completed_ms", manifest.last_retrain->completed_ms},
            {"model_version", manifest.last_retrain->model_version},
            {"deleted_since_snapshot", details.value("deleted_since_snapshot", 0)}};
  }
  return {{"in_progress", in_progress}, {"last", last}};
}

std::optional<RetrainRun> pending_retrain(const JobManifest& manifest) {
  const auto adopted = manifest.last_retrain ? manifest.last_retrain->details.value("id", std::string()) : std::string();
  std::optional<RetrainRun> pending;
  for (auto& run : list_retrain_runs(manifest.dir)) {
    if (run.status == RetrainStatus::kTrained && run.id != adopted && !superseded(run, manifest)) pending = std::move(run);
  }
  return pending;
}

Adoption plan_adoption(const JobManifest& current, const RetrainRun& run, const storage::Dataset& dataset) {
  const auto where = (retrain_dir(current.dir) / (run.id + ".json")).string();
  if (run.status != RetrainStatus::kTrained) {
    throw TrainerError(ErrorKind::kInvalidInput, where + ": the retrain is " + std::string(to_string(run.status)) +
                                                     ", not trained: there is nothing to adopt");
  }
  if (run.config_digest != current.config_digest || run.dataset_uuid != current.dataset.uuid) {
    throw TrainerError(ErrorKind::kMismatch, where + ": the retrain was made for another config or dataset than the job "
                                                     "has now; it cannot be adopted (run `lethe retrain` again)");
  }
  if (current.last_retrain && current.last_retrain->details.value("id", std::string()) == run.id) {
    throw TrainerError(ErrorKind::kMismatch, where + ": the job adopted this retrain already");
  }
  if (current.last_retrain && current.last_retrain->details.value("started_ms", std::int64_t{0}) > run.started_ms) {
    throw TrainerError(ErrorKind::kMismatch, where + ": a retrain started later was adopted already; this one is stale "
                                                     "(run `lethe retrain` again if the job needs one)");
  }
  // Records deleted since the snapshot: erased now, or awaiting erasure by the last batch.
  const std::set<std::uint64_t> before(run.snapshot.excluded_rows.begin(), run.snapshot.excluded_rows.end());
  std::vector<std::string> deleted;
  for (const auto row : excluded_rows(current, dataset)) {
    if (before.count(row) == 0) deleted.emplace_back(dataset.id(row));
  }
  Adoption adoption;
  adoption.next = current;
  adoption.report = {{"id", run.id}, {"deleted_since_snapshot", deleted.size()}, {"routes", json::object()}};
  for (const auto& [name, result] : run.routes.items()) {
    const auto* kind = find_route_kind(name);
    if (kind == nullptr || kind->adopt == nullptr || current.section(name) == nullptr) {
      throw TrainerError(ErrorKind::kMismatch, where + ": it retrained the model '" + name +
                                                       "', which this job does not have or cannot adopt");
    }
    auto adopted = kind->adopt(current, result, deleted, dataset);
    adoption.next.routes[name] = std::move(adopted.section);
    adoption.purge.insert(adoption.purge.end(), adopted.purge.begin(), adopted.purge.end());
    adoption.report["routes"][name] = {{"retrain", result.at("report")}, {"forgotten", adopted.report}};
  }
  adoption.next.model_version = current.model_version + 1;
  json purge = json::array();
  for (const auto& t : adoption.purge) purge.push_back({{"series", t.series}, {"version", t.version}});
  adoption.next.last_retrain = RetrainRecord{now_ms(), adoption.next.model_version,
                                             {{"id", run.id},
                                              {"started_ms", run.started_ms},
                                              {"deleted_since_snapshot", deleted.size()},
                                              {"routes", adoption.report["routes"]},
                                              {"purge", purge}}};
  return adoption;
}

void finish_adoption(const JobManifest& committed) {
  if (!committed.last_retrain) return;
  const auto& details = committed.last_retrain->details;
  const auto id = details.value("id", std::string());
  auto run = id.empty() ? std::nullopt : find_retrain_run(committed.dir, id);
  if (!run || run->status == RetrainStatus::kAdopted) return;
  storage::CheckpointStore store(committed.checkpoints_path());
  std::map<std::string, std::vector<int>> by_series;
  for (const auto& t : details.value("purge", json::array())) {
    by_series[t.at("series").get<std::string>()].push_back(t.at("version").get<int>());
  }
  for (const auto& [series, versions] : by_series) store.purge(series, versions);
  run->status = RetrainStatus::kAdopted;
  run->adopted_ms = committed.last_retrain->completed_ms;
  run->model_version = committed.last_retrain->model_version;
  run->adoption = {{"deleted_since_snapshot", details.value("deleted_since_snapshot", 0)}, {"routes", details.value("routes", json::object())}};
  write_retrain_run(committed.dir, *run);
  // Older trained runs will never be adopted now: their checkpoints go.
  drop_runs(committed, [&](const RetrainRun& other) { return superseded(other, committed); },
            [](const RetrainRun&) { return std::string(kSupersededError); });
}

}  // namespace lethe::trainer
