// `lethe status --job DIR`: a job at a glance, as JSON on stdout: its models (version, live depth per
// shard, retrain_pending, noisy-GD steps), its deletions by ledger status, the last deletion batch
// and the last retrain. Reads only the manifest and the ledger (read-only, no job lock): fast, and
// safe while `lethe serve` or another writer holds the job.
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "deletion/job_router.h"
#include "launch/command_registry.h"
#include "storage/ledger.h"
#include "trainer/job_manifest.h"

namespace lethe::launch {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Pending requests listed by id; the counts cover all of them.
constexpr std::size_t kPendingListed = 100;

json deletions_json(const fs::path& job_dir, const trainer::JobManifest& manifest) {
  const auto file = storage::job_ledger_path(job_dir);
  json out = {{"ledger", file.string()}};
  if (!fs::exists(file)) {
    // No deletion has ever been requested: `lethe serve` / `lethe delete --job` create the ledger.
    out.update({{"queued", 0}, {"applied", 0}, {"completed", 0}, {"failed", 0}, {"pending", json::array()},
                {"clear_values", {{"finished_record_ids", 0}, {"finished_subjects_or_keys", 0}}}});
    return out;
  }
  const storage::Ledger ledger(file, storage::Ledger::Access::kReadOnly);
  for (const auto& [status, count] : ledger.counts()) out[std::string(storage::to_string(status))] = count;
  json pending = json::array();
  for (const auto& request : ledger.unfinished()) {
    if (pending.size() == kPendingListed) break;
    pending.push_back({{"id", request.id},
                       {"status", std::string(storage::to_string(request.status))},
                       {"submitted_ms", request.submitted_ms},
                       {"records", request.record_ids.size()},
                       {"subject", request.subject.has_value()}});
  }
  out["pending"] = pending;
  // The ledger's promise, audited: no clear id, subject or key of a finished request remains.
  const auto clear = ledger.clear_values();
  out["clear_values"] = {{"finished_record_ids", clear.finished_record_ids},
                         {"finished_subjects_or_keys", clear.finished_subjects_or_keys}};
  if (manifest.last_batch) {
    const auto& outcome = *manifest.last_batch;
    json batch = {{"requests", outcome.request_ids},
                  {"records_deleted", outcome.records_deleted},
                  {"model_version", outcome.model_version}};
    // The batch's time is its requests' completion in the ledger (the manifest keeps no clock).
    std::int64_t completed_ms = 0;
    for (const auto& id : outcome.request_ids) {
      if (const auto request = ledger.get(id)) completed_ms = std::max(completed_ms, request->completed_ms);
    }
    batch["completed_ms"] = completed_ms > 0 ? json(completed_ms) : json(nullptr);
    out["last_batch"] = batch;
  }
  return out;
}

json status_json(const fs::path& job_dir) {
  if (!fs::is_directory(job_dir)) {
    throw std::invalid_argument("--job " + job_dir.string() + ": no such directory; pass a job directory written by `lethe train`");
  }
  if (!fs::exists(trainer::job_manifest_path(job_dir))) {
    throw std::invalid_argument("--job " + job_dir.string() + " is not a Lethe job: it holds no manifest.json; pass the "
                                "job_dir a `lethe train` run wrote (its config's job_dir or --job)");
  }
  const auto manifest = trainer::read_job_manifest(job_dir);
  json out = deletion::models_json(manifest);
  out["status"] = std::string(trainer::to_string(manifest.status));  // "training" until `lethe train` finishes
  out["dataset"] = manifest.dataset.path.string();
  out["deletions"] = deletions_json(job_dir, manifest);
  out["last_retrain"] = manifest.last_retrain ? json{{"completed_ms", manifest.last_retrain->completed_ms},
                                                     {"model_version", manifest.last_retrain->model_version}}
                                                  : json(nullptr);
  if (manifest.last_retrain) out["last_retrain"].update(manifest.last_retrain->details);
  return out;
}

void install(CLI::App& app) {
  auto job = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "status", "A job's models, pending and finished deletions and last retrain, as JSON (read-only; works while served)");
  cmd->footer(
      "Example:\n  lethe status --job runs/fashion-s3t\n"
      "Prints models (s3t: version, live_shards, per shard depth and served_sequence, retrain_pending;\n"
      "noisy_gd: version, records, steps_taken), deletions (queued, applied, completed, failed, pending ids,\n"
      "last_batch, clear_values: clear ids/subjects left in finished requests, 0 when the ledger keeps its\n"
      "promise), retrain (in_progress: running retrains and their phase; last) and last_retrain (id,\n"
      "started_ms, completed_ms, model_version, deleted_since_snapshot, routes: per model what the retrain\n"
      "restored and what its adoption forgot).\n"
      "Takes no lock and writes nothing, so it runs beside `lethe serve`.");
  cmd->add_option("--job", *job, "Job directory written by `lethe train`")->required();
  cmd->callback([job] { std::cout << status_json(*job).dump(2) << std::endl; });
}

const CommandRegistration registration{32, install};

}  // namespace
}  // namespace lethe::launch
