// launch/job_config.h — the YAML job configuration of `lethe pretrain|train|eval`, parsed and validated
// into plain structs (no torch here); errors name the file and the key ("s3t.slices") and the fix.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "trainer/job_settings.h"

namespace lethe::launch {

// A configuration error: the message names the config file and the key.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The job config is trainer::JobSettings: one struct per section, each setting declared once
// (trainer/job_settings.h); this file only reads YAML into it.
using JobConfig = trainer::JobSettings;

// Parses YAML text; `origin` names it in errors and its folder anchors relative paths.
[[nodiscard]] JobConfig parse_job_config(const std::string& yaml_text, const std::filesystem::path& origin);
// Reads and parses a file; ConfigError naming the path when it cannot be read.
[[nodiscard]] JobConfig load_job_config(const std::filesystem::path& path);

// The config with its job directory: `job_dir` (when not empty) overrides the config's job_dir.
// ConfigError naming job_dir when neither gives one.
[[nodiscard]] JobConfig with_job_dir(JobConfig config, const std::filesystem::path& job_dir);

// Training a job directory again (`lethe train`, also with --resume) is refused once the job has
// taken deletion requests (its ledger exists): it would undo them. Throws ConfigError naming
// `lethe retrain`, which restores truncated sequences without undoing anything.
void check_job_not_served(const std::filesystem::path& job_dir);

}  // namespace lethe::launch
