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

#include "trainer/model_config.h"
#include "trainer/s3t_job.h"
#include "trainer/s3t_plan.h"

namespace lethe::trainer {
struct NoisyGdJobSpec;  // trainer/noisy_gd_job.h (a torch header): included where it is used
}  // namespace lethe::trainer

namespace lethe::launch {

// A configuration error: the message names the config file and the key.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TrainingConfig {
  int epochs = 2;
  std::int64_t batch_size = 128;
  double learning_rate = 1e-3;
  std::int64_t cache_batch_size = 1024;  // records per frozen pass when building activation caches
};

struct PretrainConfig {
  int epochs = 3;
  std::int64_t batch_size = 128;
  double learning_rate = 1e-3;
};

struct S3TConfig {
  bool enabled = true;  // `s3t: {enabled: false}`: a job with the noisy-GD model only
  int shards = 4;
  int slices = 4;     // L; the model gets L adapter sites
  int sequences = 4;  // B per shard
  trainer::SequenceSelection selection = trainer::SequenceSelection::kCyclic;
  std::vector<double> deletion_probabilities;  // per slice, BMS only
  int horizon = 1;                             // BMS: deletions t in E[depth]
};

// The `noisy_gd:` section (DESIGN.md §4): softmax regression on the backbone's normalized features,
// trained by noisy GD, whose deletions are certified. Defaults tuned on Fashion-MNIST (docs/BENCHMARKS.md):
// one deletion costs K_U = 5 steps against 200 for a retrain, at 1 point below the noise-free model.
struct NoisyGdSettings {
  bool enabled = false;  // true when the config has the section, unless it says enabled: false
  double lambda = 0.005;  // L2 regularization (strong convexity)
  double eta = 0;         // step size; 0 in the struct until parsed: default 1/(beta + lambda)
  double sigma = 0.01;    // noise: each step adds sqrt(2 eta sigma^2) N(0, I)
  double clip = 1.4142135623730951;  // per-example gradient clip M; below sqrt(2): uncertified
  std::int64_t train_steps = 200;    // steps of training from scratch (`steps:`)
  double target_epsilon = 1.0;       // what each deletion certifies
  std::optional<double> delta;       // default 1/n
};

struct JobConfig {
  std::filesystem::path source;    // the YAML file (relative paths in it are resolved against its folder)
  std::filesystem::path dataset;   // training dataset (HDF5, `lethe ingest`)
  std::filesystem::path test_dataset;  // optional: default data for `lethe eval`
  std::filesystem::path backbone;  // backbone weights (HDF5): written by `lethe pretrain`, read by train
  std::filesystem::path job_dir;   // checkpoints, manifest, config copy
  std::uint64_t seed = 0;
  std::string device = "cpu";  // "cpu" or "cuda"
  int threads = 1;             // torch intra-op threads per rank: fixed so results do not vary
  trainer::ModelConfig model;  // model.sites is set to s3t.slices (1 without S3T: no adapters)
  TrainingConfig training;
  PretrainConfig pretrain;
  S3TConfig s3t;
  NoisyGdSettings noisy_gd;
};

// Parses YAML text; `origin` names it in errors and its folder anchors relative paths.
[[nodiscard]] JobConfig parse_job_config(const std::string& yaml_text, const std::filesystem::path& origin);
// Reads and parses a file; ConfigError naming the path when it cannot be read.
[[nodiscard]] JobConfig load_job_config(const std::filesystem::path& path);

// Canonical JSON of every setting that influences training results (stored in the manifest).
[[nodiscard]] nlohmann::json to_json(const JobConfig& config);
// Hex digest of to_json(config) minus paths: recorded in every checkpoint's metadata.
[[nodiscard]] std::string config_digest(const JobConfig& config);

// The trainer's view of a job; `job_dir` (when not empty) overrides the config's job_dir.
// ConfigError naming job_dir when neither gives one.
[[nodiscard]] trainer::S3TJobSpec to_job_spec(const JobConfig& config, const std::filesystem::path& job_dir = {});
// The trainer's view of the noisy_gd section (trainer/noisy_gd_job.h); meaningful when it is enabled.
[[nodiscard]] trainer::NoisyGdJobSpec to_noisy_gd_spec(const JobConfig& config);

// Training a job directory again (`lethe train`, also with --resume) is refused once the job has
// taken deletion requests (its ledger exists): it would undo them. Throws ConfigError naming
// `lethe retrain`, which restores truncated sequences without undoing anything.
void check_job_not_served(const std::filesystem::path& job_dir);

}  // namespace lethe::launch
