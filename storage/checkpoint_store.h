// storage/checkpoint_store.h — versioned checkpoint series on disk: one directory and one
// MANIFEST.json (the commit marker) per series, committed durably, verified and purgeable.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "storage/checkpoint_file.h"
#include "storage/checkpoint_tensor.h"

namespace lethe::storage {

struct CheckpointInfo {
  std::string name;
  int version = 0;
  std::string digest;       // lowercase hex SHA-256 of tensors + metadata
  nlohmann::json metadata;  // verbatim as given to write(): what the checkpoint was trained on
  std::filesystem::path path;
  std::string created;      // ISO 8601 UTC
};

struct Checkpoint {
  CheckpointInfo info;
  std::vector<TensorData> tensors;

  // The tensor called `name`; StorageError naming the checkpoint and its tensors otherwise.
  [[nodiscard]] const TensorData& tensor(const std::string& name) const;
};

// Points in write() and purge() where a test may stop the process to simulate a crash.
enum class CommitStage {
  kDataWritten,            // v<N>.h5.tmp written and closed, not yet fsynced or renamed
  kDataCommitted,          // v<N>.h5 renamed into place, MANIFEST.json not yet touched
  kManifestWritten,        // MANIFEST.json.tmp written, not yet renamed (write and purge)
  kPurgeManifestCommitted, // purge: manifest without the version committed, file not yet shredded
};

// Layout: <root>/<name>/v000003.h5 and <root>/<name>/MANIFEST.json. A version exists once the
// manifest lists it; files it does not list are never loaded. Each series has one writer at a
// time (e.g. one rank); different series may be written concurrently by different processes or
// threads without locks. Readers may run beside the writer: the manifest is replaced atomically.
class CheckpointStore {
 public:
  // Creates `root` if needed; StorageError naming it when it cannot be created or is not a
  // directory. Does not sweep other series: their writers may be running in other ranks.
  explicit CheckpointStore(std::filesystem::path root);

  // Commits a new version of series `name` (next after the highest ever committed) and returns
  // its info. `metadata` must be a JSON object. Before writing it removes (shreds) the series'
  // leftovers of a crashed writer: *.tmp files and version files the manifest does not list.
  [[nodiscard]] CheckpointInfo write(const std::string& name, const std::vector<TensorData>& tensors,
                                     const nlohmann::json& metadata);

  // Loads and verifies (Fletcher32, SHA-256 against file and manifest) the highest committed
  // version / the given one. StorageError naming the file, the version and what to do otherwise.
  [[nodiscard]] Checkpoint load_latest(const std::string& name) const;
  [[nodiscard]] Checkpoint load(const std::string& name, int version) const;

  // Committed versions of `name`, ascending, from the manifest (no file is opened); empty when
  // the series has none. Metadata is included so that a deletion can find what to purge.
  [[nodiscard]] std::vector<CheckpointInfo> versions(const std::string& name) const;
  // Series with a manifest, sorted.
  [[nodiscard]] std::vector<std::string> names() const;

  // Removes `version` from the manifest (committed first), then overwrites and unlinks its file.
  // Idempotent: purging an already purged version only shreds a leftover file, if any.
  // StorageError when the version was never written.
  void purge(const std::string& name, int version);
  // Several versions of one series with one manifest commit (what a deletion batch purges).
  void purge(const std::string& name, const std::vector<int>& versions);
  // Purges every version of `name`. The manifest stays (empty) so versions are never reused.
  void purge_all(const std::string& name);
  // Undoes write() of the series' newest version, which nothing references (a deletion batch that
  // did not commit): the manifest is committed as it was before that write, then the file is
  // shredded. StorageError unless `version` is the newest ever written.
  void abandon(const std::string& name, int version);

  [[nodiscard]] const std::filesystem::path& root() const { return root_; }

  // Test hook only: called at each CommitStage; a crash test raises SIGKILL from it.
  void set_stage_hook_for_testing(std::function<void(CommitStage)> hook) { stage_hook_ = std::move(hook); }

 private:
  struct ManifestEntry {
    int version = 0;
    std::string file;
    std::string digest;
    std::string created;
    nlohmann::json metadata;
  };
  struct Manifest {
    int next_version = 1;
    std::vector<ManifestEntry> entries;  // ascending by version
  };

  [[nodiscard]] std::filesystem::path series_dir(const std::string& name) const;
  [[nodiscard]] std::filesystem::path manifest_path(const std::string& name) const;
  // Reads the manifest; an absent one is an empty series. StorageError when it is malformed.
  [[nodiscard]] Manifest read_manifest(const std::string& name) const;
  void commit_manifest(const std::string& name, const Manifest& manifest);
  // Shreds *.tmp files and version files that `manifest` does not list.
  void remove_uncommitted(const std::string& name, const Manifest& manifest);
  [[nodiscard]] CheckpointInfo info_of(const std::string& name, const ManifestEntry& entry) const;
  void reach(CommitStage stage) const {
    if (stage_hook_) stage_hook_(stage);
  }

  std::filesystem::path root_;
  std::function<void(CommitStage)> stage_hook_;
};

// Throws StorageError unless `name` can name a series: 1-200 characters from [A-Za-z0-9._-],
// not starting with '.' (so no "", ".", "..", "/" or hidden directories).
void validate_checkpoint_name(const std::string& name);

}  // namespace lethe::storage
