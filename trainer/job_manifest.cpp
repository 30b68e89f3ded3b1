#include "trainer/job_manifest.h"

#include <fstream>

#include "storage/durable_file.h"
#include "storage/error.h"

namespace lethe::trainer {

namespace fs = std::filesystem;

fs::path job_manifest_path(const fs::path& job_dir) { return job_dir / "manifest.json"; }

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw storage::StorageError("cannot read " + path.string() + (fs::exists(path) ? "" : " (it does not exist)"));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw storage::StorageError(path.string() + " is not valid JSON (" + e.what() + "); the job directory is damaged");
  }
}

nlohmann::json read_job_manifest(const fs::path& job_dir) { return read_json_file(job_manifest_path(job_dir)); }

void write_text_durably(const fs::path& path, const std::string& text) {
  const auto tmp = storage::temp_path_for(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) throw storage::StorageError("cannot write " + tmp.string() + ": check space and permissions");
  }
  storage::commit_file(tmp, path);
}

void write_job_manifest(const fs::path& job_dir, const nlohmann::json& manifest) {
  write_text_durably(job_manifest_path(job_dir), manifest.dump(2) + "\n");
}

}  // namespace lethe::trainer
