#include "storage/checkpoint_store.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "storage/durable_file.h"
#include "storage/error.h"

namespace lethe::storage {
namespace fs = std::filesystem;
namespace {

constexpr const char* kManifestFile = "MANIFEST.json";
constexpr const char* kManifestFormat = "lethe-checkpoint-manifest";
constexpr int kManifestFormatVersion = 1;

std::string version_file(int version) {
  std::array<char, 32> buffer{};
  std::snprintf(buffer.data(), buffer.size(), "v%06d.h5", version);
  return buffer.data();
}

// The version a file name "v000012.h5" stands for, or nothing for any other name.
std::optional<int> version_of_file(const std::string& file) {
  if (file.size() < 5 || file.front() != 'v' || !file.ends_with(".h5")) return std::nullopt;
  const std::string digits = file.substr(1, file.size() - 4);
  if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoi(digits);
}

std::string now_utc() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::array<char, 32> buffer{};
  std::strftime(buffer.data(), buffer.size(), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buffer.data();
}

std::string join_versions(const std::vector<int>& versions) {
  if (versions.empty()) return "none";
  std::string out;
  for (int v : versions) out += (out.empty() ? "" : ", ") + std::to_string(v);
  return out;
}

}  // namespace

void validate_checkpoint_name(const std::string& name) {
  const bool ok = !name.empty() && name.size() <= 200 && name.front() != '.' &&
                  std::all_of(name.begin(), name.end(), [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
                  });
  if (!ok)
    throw StorageError("checkpoint name '" + name +
                       "' is invalid: use 1-200 letters, digits, '.', '_' or '-', not starting with '.' "
                       "(it becomes a directory name, so no '/' or '..')");
}

const TensorData& Checkpoint::tensor(const std::string& name) const {
  for (const TensorData& t : tensors)
    if (t.name == name) return t;
  std::string known;
  for (const TensorData& t : tensors) known += (known.empty() ? "" : ", ") + t.name;
  throw StorageError("checkpoint '" + info.name + "' version " + std::to_string(info.version) + " (" +
                     info.path.string() + ") has no tensor '" + name + "'; it has: " +
                     (known.empty() ? "none" : known));
}

CheckpointStore::CheckpointStore(fs::path root) : root_(fs::absolute(std::move(root))) {
  std::error_code ec;
  if (fs::exists(root_, ec)) {
    if (!fs::is_directory(root_, ec))
      throw StorageError("checkpoint root '" + root_.string() + "' exists but is not a directory: choose a directory");
    return;
  }
  if (!fs::create_directories(root_, ec) || ec)
    throw StorageError("cannot create checkpoint root '" + root_.string() + "': " + ec.message() +
                       " (choose a writable directory)");
  fsync_directory(root_.parent_path());
}

fs::path CheckpointStore::series_dir(const std::string& name) const { return root_ / name; }
fs::path CheckpointStore::manifest_path(const std::string& name) const { return series_dir(name) / kManifestFile; }

CheckpointStore::Manifest CheckpointStore::read_manifest(const std::string& name) const {
  const fs::path path = manifest_path(name);
  std::error_code ec;
  if (!fs::exists(path, ec)) return {};
  const std::string fix = ": it is the commit record of checkpoint series '" + name +
                          "'; restore it from a backup, or delete the directory '" + series_dir(name).string() +
                          "' to abandon the series";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw StorageError("cannot read checkpoint manifest '" + path.string() + "'" + fix);
  Manifest manifest;
  try {
    const nlohmann::json doc = nlohmann::json::parse(in);
    if (doc.value("format", "") != kManifestFormat || doc.at("format_version").get<int>() != kManifestFormatVersion)
      throw StorageError("not a lethe checkpoint manifest of format version " +
                         std::to_string(kManifestFormatVersion));
    if (doc.at("name").get<std::string>() != name)
      throw StorageError("it names series '" + doc.at("name").get<std::string>() + "', not '" + name + "'");
    manifest.next_version = doc.at("next_version").get<int>();
    int previous = 0;
    for (const nlohmann::json& item : doc.at("versions")) {
      ManifestEntry entry{item.at("version").get<int>(), item.at("file").get<std::string>(),
                          item.at("digest").get<std::string>(), item.at("created").get<std::string>(),
                          item.at("metadata")};
      if (entry.version <= previous || entry.version >= manifest.next_version)
        throw StorageError("version " + std::to_string(entry.version) + " is out of order");
      if (entry.file != version_file(entry.version))
        throw StorageError("version " + std::to_string(entry.version) + " points at '" + entry.file +
                           "' instead of '" + version_file(entry.version) + "'");
      previous = entry.version;
      manifest.entries.push_back(std::move(entry));
    }
  } catch (const nlohmann::json::exception& e) {
    throw StorageError("checkpoint manifest '" + path.string() + "' is malformed JSON or misses a field (" +
                       e.what() + ")" + fix);
  } catch (const StorageError& e) {
    throw StorageError("checkpoint manifest '" + path.string() + "' is invalid (" + e.what() + ")" + fix);
  }
  return manifest;
}

void CheckpointStore::commit_manifest(const std::string& name, const Manifest& manifest) {
  nlohmann::json versions = nlohmann::json::array();
  for (const ManifestEntry& e : manifest.entries)
    versions.push_back({{"version", e.version}, {"file", e.file}, {"digest", e.digest}, {"created", e.created},
                        {"metadata", e.metadata}});
  const nlohmann::json doc = {{"format", kManifestFormat}, {"format_version", kManifestFormatVersion},
                              {"name", name},           {"next_version", manifest.next_version},
                              {"versions", versions}};
  const fs::path target = manifest_path(name);
  const fs::path tmp = temp_path_for(target);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << doc.dump(2) << '\n';
    out.close();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);  // a partial manifest must not stay behind on a full disk
      throw StorageError("cannot write checkpoint manifest '" + tmp.string() +
                         "': check that the directory is writable and the disk has space");
    }
  }
  reach(CommitStage::kManifestWritten);
  commit_file(tmp, target);
}

void CheckpointStore::remove_uncommitted(const std::string& name, const Manifest& manifest) {
  std::set<int> listed;
  for (const ManifestEntry& e : manifest.entries) listed.insert(e.version);
  std::error_code ec;
  std::vector<fs::path> leftovers;
  for (const fs::directory_entry& entry : fs::directory_iterator(series_dir(name), ec)) {
    if (!entry.is_regular_file(ec)) continue;
    const std::string file = entry.path().filename().string();
    const std::optional<int> version = version_of_file(file);
    // Leftovers may hold a record's influence, so they are shredded, not just unlinked.
    if (file.ends_with(".tmp") || (version && !listed.contains(*version))) leftovers.push_back(entry.path());
  }
  if (ec)
    throw StorageError("cannot list checkpoint directory '" + series_dir(name).string() + "': " + ec.message());
  shred_files(leftovers);
}

void CheckpointStore::abandon(const std::string& name, int version) {
  validate_checkpoint_name(name);
  Manifest manifest = read_manifest(name);
  if (manifest.entries.empty() || manifest.entries.back().version != version || manifest.next_version != version + 1) {
    throw StorageError("cannot abandon version " + std::to_string(version) + " of checkpoint series '" + name +
                       "': only the newest version written can be abandoned (newest: " +
                       std::to_string(manifest.next_version - 1) + ")");
  }
  const fs::path file = series_dir(name) / manifest.entries.back().file;
  manifest.entries.pop_back();
  manifest.next_version = version;
  commit_manifest(name, manifest);
  shred_files({file});
}

CheckpointInfo CheckpointStore::info_of(const std::string& name, const ManifestEntry& entry) const {
  return {name, entry.version, entry.digest, entry.metadata, series_dir(name) / entry.file, entry.created};
}

CheckpointInfo CheckpointStore::write(const std::string& name, const std::vector<TensorData>& tensors,
                                      const nlohmann::json& metadata) {
  validate_checkpoint_name(name);
  if (!metadata.is_object())
    throw StorageError("metadata of checkpoint '" + name +
                       "' must be a JSON object saying what it was trained on (shard, sequence, prefix, slices, "
                       "data version, seeds), not " + std::string(metadata.type_name()));
  // Stored as text: keep exactly what a reload yields (e.g. NaN becomes null), so the digest holds.
  const nlohmann::json stored_metadata = nlohmann::json::parse(metadata.dump());
  const fs::path dir = series_dir(name);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (!fs::create_directory(dir, ec) || ec)
      throw StorageError("cannot create checkpoint directory '" + dir.string() + "': " + ec.message() +
                         " (check that '" + root_.string() + "' is writable)");
    fsync_directory(root_);
  }
  Manifest manifest = read_manifest(name);
  remove_uncommitted(name, manifest);

  ManifestEntry entry{manifest.next_version, version_file(manifest.next_version), "", now_utc(), stored_metadata};
  const fs::path target = dir / entry.file;
  const fs::path tmp = temp_path_for(target);
  try {
    entry.digest = write_checkpoint_file(tmp, name, entry.version, entry.created, tensors, stored_metadata);
  } catch (...) {
    fs::remove(tmp, ec);  // never committed; the next write would shred it anyway
    throw;
  }
  reach(CommitStage::kDataWritten);
  commit_file(tmp, target);
  reach(CommitStage::kDataCommitted);

  manifest.entries.push_back(entry);
  manifest.next_version = entry.version + 1;
  try {
    commit_manifest(name, manifest);
  } catch (...) {
    // Unlisted, the version does not exist; its file goes now rather than at the next write.
    try {
      shred_file(target);
    } catch (const std::exception&) {
    }
    throw;
  }
  return info_of(name, entry);
}

Checkpoint CheckpointStore::load_latest(const std::string& name) const {
  validate_checkpoint_name(name);
  const Manifest manifest = read_manifest(name);
  if (manifest.entries.empty())
    throw StorageError("checkpoint series '" + name + "' has no committed version (no versions in '" +
                       manifest_path(name).string() + "'): write one first, or check the name");
  return load(name, manifest.entries.back().version);
}

Checkpoint CheckpointStore::load(const std::string& name, int version) const {
  validate_checkpoint_name(name);
  const Manifest manifest = read_manifest(name);
  std::vector<int> committed;
  for (const ManifestEntry& e : manifest.entries) committed.push_back(e.version);
  const auto found = std::find_if(manifest.entries.begin(), manifest.entries.end(),
                                  [&](const ManifestEntry& e) { return e.version == version; });
  if (found == manifest.entries.end())
    throw StorageError("checkpoint series '" + name + "' has no committed version " + std::to_string(version) +
                       " in '" + manifest_path(name).string() + "' (committed versions: " +
                       join_versions(committed) + "): load one of those");
  Checkpoint checkpoint{info_of(name, *found), {}};
  const std::string which = "checkpoint '" + name + "' version " + std::to_string(version);
  const std::string which_file = which + " ('" + checkpoint.info.path.string() + "')";
  std::vector<int> others;
  std::copy_if(committed.begin(), committed.end(), std::back_inserter(others), [&](int v) { return v != version; });
  const std::string fix = " [other committed versions of '" + name + "': " + join_versions(others) +
                          "; load one with load(name, version), or purge version " + std::to_string(version) + "]";
  std::error_code ec;
  if (!fs::exists(checkpoint.info.path, ec))
    throw StorageError(which_file + " is listed in the manifest but its file is missing: the store was changed "
                       "outside lethe" + fix);
  CheckpointContent content;
  try {
    content = read_checkpoint_file(checkpoint.info.path);
  } catch (const StorageError& e) {
    throw StorageError(which + " cannot be loaded: " + e.what() + fix);
  }
  if (content.name != name || content.version != version)
    throw StorageError(which_file + " holds series '" + content.name + "' version " + std::to_string(content.version) +
                       ": a file was copied or renamed outside lethe" + fix);
  if (content.digest != found->digest || content.metadata != found->metadata)
    throw StorageError(which_file + " does not match its manifest entry (digest " + content.digest + ", manifest says " +
                       found->digest + "): the file or the manifest was altered" + fix);
  checkpoint.tensors = std::move(content.tensors);
  return checkpoint;
}

std::vector<CheckpointInfo> CheckpointStore::versions(const std::string& name) const {
  validate_checkpoint_name(name);
  std::vector<CheckpointInfo> out;
  for (const ManifestEntry& e : read_manifest(name).entries) out.push_back(info_of(name, e));
  return out;
}

std::vector<std::string> CheckpointStore::names() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(root_, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory(ec) && fs::exists(entry.path() / kManifestFile, ec)) out.push_back(name);
  }
  if (ec) throw StorageError("cannot list checkpoint root '" + root_.string() + "': " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

void CheckpointStore::purge(const std::string& name, int version) { purge(name, std::vector<int>{version}); }

void CheckpointStore::purge(const std::string& name, const std::vector<int>& versions) {
  validate_checkpoint_name(name);
  Manifest manifest = read_manifest(name);
  for (const int version : versions) {
    if (version < 1 || version >= manifest.next_version)
      throw StorageError("checkpoint series '" + name + "' never had a version " + std::to_string(version) +
                         " (versions so far: 1 to " + std::to_string(manifest.next_version - 1) + " in '" +
                         series_dir(name).string() + "'): check the name and version");
  }
  const auto listed = manifest.entries.size();
  std::erase_if(manifest.entries, [&](const ManifestEntry& e) {
    return std::find(versions.begin(), versions.end(), e.version) != versions.end();
  });
  if (manifest.entries.size() != listed) {
    commit_manifest(name, manifest);  // first: a crash now leaves an unlisted file, never a dangling entry
    reach(CommitStage::kPurgeManifestCommitted);
  }
  remove_uncommitted(name, manifest);
}

void CheckpointStore::purge_all(const std::string& name) {
  validate_checkpoint_name(name);
  Manifest manifest = read_manifest(name);
  std::error_code ec;
  if (!fs::is_directory(series_dir(name), ec))
    throw StorageError("no checkpoint series '" + name + "' under '" + root_.string() + "': check the name");
  if (!manifest.entries.empty()) {
    manifest.entries.clear();
    commit_manifest(name, manifest);
    reach(CommitStage::kPurgeManifestCommitted);
  }
  remove_uncommitted(name, manifest);
}

}  // namespace lethe::storage
