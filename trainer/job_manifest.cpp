#include "trainer/job_manifest.h"

#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

#include "storage/durable_file.h"
#include "storage/hashing.h"
#include "trainer/error.h"
#include "trainer/json_fields.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The manifest format of Lethe before the typed manifest (S3T shards and noisy_gd at top level).
constexpr std::string_view kFormatV1 = "lethe-s3t-job";

json encode_batch(const BatchRecord& b) {
  json purge = json::array();
  for (const auto& t : b.purge) purge.push_back({{"series", t.series}, {"version", t.version}});
  return {{"requests", b.request_ids}, {"records_deleted", b.records_deleted}, {"model_version", b.model_version},
          {"models", b.models},        {"purge", purge},                       {"erase_rows", b.erase_rows}};
}

BatchRecord decode_batch(const JsonFields& f) {
  BatchRecord b;
  b.request_ids = f.get<std::vector<std::string>>("requests");
  b.records_deleted = f.get<std::int64_t>("records_deleted");
  b.model_version = f.get<std::int64_t>("model_version");
  b.models = f.raw("models");
  for (std::size_t i = 0; i < f.size_of("purge"); ++i) {
    const auto t = f.element("purge", i);
    b.purge.push_back({t.get<std::string>("series"), t.get<int>("version")});
  }
  b.erase_rows = f.get<std::vector<std::uint64_t>>("erase_rows");
  return b;
}

// Everything but the digest; the digest is SHA-256 of this object's compact dump (keys sorted).
json encode_body(const JobManifest& m) {
  json routes = json::object();
  for (const auto& [name, section] : m.routes) routes[name] = section;
  json body = {{"format", kJobManifestFormat},
               {"format_version", kJobManifestFormatVersion},
               {"generation", m.generation},
               {"status", to_string(m.status)},
               {"config", to_json(m.config, m.dir)},
               {"config_digest", m.config_digest},
               {"dataset",
                {{"path", m.dataset.path.empty() ? std::string()
                                                 : fs::absolute(m.dataset.path).lexically_normal().lexically_relative(
                                                       fs::absolute(m.dir).lexically_normal()).string()},
                 {"uuid", m.dataset.uuid},
                 {"digest", m.dataset.digest}}},
               {"backbone", {{"file", m.backbone_file}, {"sha256", m.backbone_digest}}},
               {"checkpoints", m.checkpoints},
               {"model", to_json(m.model)},
               {"model_version", m.model_version},
               {"routes", routes},
               {"last_batch", m.last_batch ? encode_batch(*m.last_batch) : json()},
               {"last_retrain", m.last_retrain ? json{{"completed_ms", m.last_retrain->completed_ms},
                                                      {"model_version", m.last_retrain->model_version},
                                                      {"details", m.last_retrain->details}}
                                               : json()}};
  if (!m.trunk_file.empty()) body["trunk"] = {{"file", m.trunk_file}};  // only with a trunk: older manifests read as before
  return body;
}

std::string digest_of(const json& body) { return storage::sha256_hex(body.dump()); }

// A path stored in the job must stay inside it (a manifest names no file elsewhere but the dataset).
std::string inside_job(const JsonFields& f, const std::string& key) {
  const auto value = f.get<std::string>(key);
  const fs::path p(value);
  if (value.empty() || p.is_absolute() || p.lexically_normal().string().rfind("..", 0) == 0)
    f.fail(key, "'" + value + "' must be a path inside the job directory");
  return value;
}

json parse_file(const fs::path& file) {
  std::ifstream in(file);
  if (!in) {
    throw TrainerError(fs::exists(file) ? ErrorKind::kDamaged : ErrorKind::kNotFound,
                       fs::exists(file) ? "cannot read " + file.string() + ": check its permissions"
                                        : file.parent_path().string() +
                                              " is not a trained job directory (it holds no manifest.json); run "
                                              "`lethe train` first, or pass the job_dir a `lethe train` run wrote");
  }
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw TrainerError(ErrorKind::kDamaged, file.string() + " is not valid JSON (" + e.what() +
                                                "); the job directory is damaged: restore it from a backup");
  }
}

}  // namespace

std::string_view to_string(JobStatus status) { return status == JobStatus::kTrained ? "trained" : "training"; }

fs::path job_manifest_path(const fs::path& job_dir) { return job_dir / "manifest.json"; }
fs::path JobManifest::path() const { return job_manifest_path(dir); }

const json* JobManifest::section(std::string_view route) const {
  const auto it = routes.find(std::string(route));
  return it == routes.end() ? nullptr : &it->second;
}

json encode_job_manifest(const JobManifest& manifest) {
  auto body = encode_body(manifest);
  body["digest"] = digest_of(body);
  return body;
}

JobManifest decode_job_manifest(const json& j, const fs::path& job_dir) {
  const auto origin = job_manifest_path(job_dir).string();
  if (!j.is_object()) throw TrainerError(ErrorKind::kDamaged, origin + " is not a JSON object; the job directory is damaged");
  const auto format = j.value("format", std::string());
  if (format == kFormatV1) {
    throw TrainerError(ErrorKind::kDamaged,
                       origin + " was written by an earlier Lethe (format " + std::string(kFormatV1) +
                           ", format_version 1); this Lethe reads " + std::string(kJobManifestFormat) + " version " +
                           std::to_string(kJobManifestFormatVersion) +
                           ", which records the dataset's and the backbone's identity. Train the job anew with "
                           "`lethe train` into a new job directory (and replay its deletions: docs/OPERATIONS.md)");
  }
  if (format != kJobManifestFormat) {
    throw TrainerError(ErrorKind::kDamaged, origin + " is not a Lethe job manifest (format '" + format + "', expected '" +
                                                std::string(kJobManifestFormat) + "')");
  }
  const JsonFields f(j, origin);
  const auto version = f.get<int>("format_version");
  if (version != kJobManifestFormatVersion) {
    throw TrainerError(ErrorKind::kDamaged, origin + ": format_version " + std::to_string(version) + ", but this Lethe reads " +
                                                std::to_string(kJobManifestFormatVersion) +
                                                (version > kJobManifestFormatVersion ? ": upgrade Lethe" : ": train the job anew"));
  }
  JobManifest m;
  m.dir = job_dir;
  m.generation = f.get<std::uint64_t>("generation");
  const auto status = f.get<std::string>("status");
  if (status != "trained" && status != "training") f.fail("status", "'" + status + "' is neither 'training' nor 'trained'");
  m.status = status == "trained" ? JobStatus::kTrained : JobStatus::kTraining;
  m.config = job_settings_from_json(f.raw("config"), job_dir, origin + " (config)");
  m.config_digest = f.get<std::string>("config_digest");
  const auto dataset = f.child("dataset");
  const auto dataset_path = dataset.get<std::string>("path");
  m.dataset = {dataset_path.empty() ? fs::path() : (job_dir / dataset_path).lexically_normal(), dataset.get<std::string>("uuid"),
               dataset.get<std::string>("digest")};
  const auto backbone = f.child("backbone");
  m.backbone_file = inside_job(backbone, "file");
  m.backbone_digest = backbone.get<std::string>("sha256");
  m.checkpoints = inside_job(f, "checkpoints");
  if (f.has("trunk")) m.trunk_file = inside_job(f.child("trunk"), "file");
  try {
    m.model = model_config_from_json(f.raw("model"));
  } catch (const std::exception& e) {
    f.fail("model", e.what());
  }
  if (m.model.trunk.has_value() != !m.trunk_file.empty())
    f.fail("trunk", m.trunk_file.empty() ? "missing: the model has a trunk (model.trunk), so the job holds a copy of it"
                                         : "names a trunk file, but the model has no trunk");
  m.model_version = f.get<std::int64_t>("model_version");
  const auto& routes = f.raw("routes");
  if (!routes.is_object()) f.fail("routes", "expected an object of route sections");
  for (const auto& [name, section] : routes.items()) m.routes[name] = section;
  if (f.has("last_batch")) m.last_batch = decode_batch(f.child("last_batch"));
  if (f.has("last_retrain")) {
    const auto r = f.child("last_retrain");
    m.last_retrain = RetrainRecord{r.get<std::int64_t>("completed_ms"), r.get<std::int64_t>("model_version"), r.raw("details")};
  }
  return m;
}

JobManifest read_job_manifest(const fs::path& job_dir) {
  const auto file = job_manifest_path(job_dir);
  auto j = parse_file(file);
  // The digest is checked before anything is decoded: a hand-edited value must not be served.
  if (j.is_object() && j.value("format", std::string()) == kJobManifestFormat) {
    const auto stored = j.contains("digest") && j["digest"].is_string() ? j["digest"].get<std::string>() : std::string();
    auto body = j;
    body.erase("digest");
    const auto actual = digest_of(body);
    if (stored != actual) {
      throw TrainerError(ErrorKind::kDamaged,
                         file.string() + ": its content does not match its digest (stored " +
                             (stored.empty() ? std::string("none") : stored.substr(0, 16)) + "…, content " +
                             actual.substr(0, 16) +
                             "…): it was edited by hand or damaged, and Lethe will not serve a model it cannot vouch "
                             "for. Restore the job directory from a backup (docs/OPERATIONS.md)");
    }
  }
  return decode_job_manifest(j, job_dir);
}

void commit_job_manifest(JobManifest& manifest) {
  const auto file = manifest.path();
  if (fs::exists(file)) {
    const auto on_disk = parse_file(file);
    const auto generation = on_disk.is_object() ? on_disk.value("generation", std::uint64_t{0}) : 0;
    if (generation != manifest.generation) {
      throw TrainerError(ErrorKind::kConflict,
                         file.string() + " is at generation " + std::to_string(generation) + ", but this process loaded generation " +
                             std::to_string(manifest.generation) +
                             ": another process committed to the job meanwhile (e.g. `lethe retrain` while the job "
                             "lock was bypassed). Nothing was written; restart this command so that it starts from "
                             "the job as it is now");
    }
  } else if (manifest.generation != 0) {
    throw TrainerError(ErrorKind::kConflict, file.string() + " disappeared after generation " +
                                                 std::to_string(manifest.generation) +
                                                 " was loaded; restore the job directory from a backup");
  }
  auto next = manifest;
  next.generation = manifest.generation + 1;
  const auto text = encode_job_manifest(next).dump(2) + "\n";
  try {
    storage::write_file_durably(file, text);
  } catch (const std::exception& e) {
    // The rename may have happened before a later step (the directory fsync) failed: then the new
    // manifest is the job's state, and memory must follow it.
    std::ifstream in(file);
    std::stringstream current;
    current << in.rdbuf();
    if (current.str() != text) throw;
    spdlog::warn("{}: committed, but the commit reported: {}", file.string(), e.what());
  }
  manifest.generation = next.generation;
}

}  // namespace lethe::trainer
