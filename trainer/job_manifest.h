// trainer/job_manifest.h — <job_dir>/manifest.json, the job's commit marker: read, and replaced
// durably (tmp, fsync, rename, directory fsync) by training, deletion and retraining alike.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace lethe::trainer {

[[nodiscard]] std::filesystem::path job_manifest_path(const std::filesystem::path& job_dir);

// The parsed manifest; StorageError naming the file when it is missing or not JSON.
[[nodiscard]] nlohmann::json read_job_manifest(const std::filesystem::path& job_dir);
// Replaces the manifest atomically: a crash leaves the old or the new one, never a torn one.
void write_job_manifest(const std::filesystem::path& job_dir, const nlohmann::json& manifest);

// Any JSON file, with the same errors as read_job_manifest.
[[nodiscard]] nlohmann::json read_json_file(const std::filesystem::path& path);
// Writes `text` to `path` through the commit protocol (storage/durable_file.h).
void write_text_durably(const std::filesystem::path& path, const std::string& text);

}  // namespace lethe::trainer
