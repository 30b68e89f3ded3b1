// trainer/job_settings.h — a job's settings: one struct per section of the YAML job config, each
// setting declared once with its one default, used from the parser (launch/job_config.h) down to
// the trainers. Torch-free. docs/CONFIG.md documents every key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/accountant.h"
#include "trainer/model_config.h"
#include "trainer/s3t_plan.h"

namespace lethe::trainer {

// One Adam training loop: how many passes, how many records per step, how large a step.
struct OptimizerSettings {
  int epochs = 0;
  std::int64_t batch_size = 0;
  double learning_rate = 0;
  bool operator==(const OptimizerSettings&) const = default;
};

// `training:` — each S3T prefix step.
struct TrainingSettings {
  OptimizerSettings optimizer{2, 128, 1e-3};
  std::int64_t cache_batch_size = 1024;  // records per frozen pass (activation caches, noisy-GD features)
  bool operator==(const TrainingSettings&) const = default;
};

// `pretrain:` — the frozen backbone and head on the public records.
struct PretrainSettings {
  OptimizerSettings optimizer{3, 128, 1e-3};
  double dropout = 0;  // on every dense block's input but the first: a backbone from few records overfits
  int threads = 0;     // torch threads of each `lethe pretrain` rank; 0: the job's `threads`
  // Each batch's gradient is the ordered sum of this many micro-batches' gradients, computed spread
  // over the ranks: more ranks, the same bits (trainer/pretrain.h).
  int micro_batches = 1;
  bool operator==(const PretrainSettings&) const = default;
};

// `s3t:` (DESIGN.md §3).
struct S3TSettings {
  bool enabled = true;  // `s3t: {enabled: false}`: a job with the noisy-GD model only
  int shards = 4;
  int slices = 4;     // L; the model gets L adapter sites
  int sequences = 4;  // B per shard
  SequenceSelection selection = SequenceSelection::kCyclic;
  std::vector<double> deletion_probabilities;  // per slice, BMS only (uniform when not given)
  int horizon = 1;                             // BMS: deletions t in E[depth]
  bool operator==(const S3TSettings&) const = default;
};

// `noisy_gd:` (DESIGN.md §4): softmax regression on the backbone's normalized features, trained by
// noisy GD, whose deletions are certified. Defaults tuned on Fashion-MNIST (docs/BENCHMARKS.md).
struct NoisyGdSettings {
  bool enabled = false;  // true when the config has the section, unless it says enabled: false
  // lambda (L2, strong convexity), eta (step; 0 until finalized: 1/(beta + lambda)), sigma (each
  // step adds sqrt(2 eta sigma^2) N(0, I)), clip (per-example gradient clip; below sqrt 2: uncertified).
  NoisyGdParams params{0.005, 0.0, 0.01, kSoftmaxGradientBound};
  std::int64_t train_steps = 200;  // steps of training from scratch (`steps:`): also a retrain's cost
  double target_epsilon = 1.0;     // what each deletion certifies
  std::optional<double> delta;     // default 1/n
  bool operator==(const NoisyGdSettings&) const = default;
};

// `retrain:` — when the service starts a retrain by itself (both off by default; either suffices).
struct RetrainSettings {
  int live_shards_below = 0;        // when fewer parts than this serve (S3T: live shards)
  double served_depth_below = 0.0;  // when the served strength falls below this fraction (S3T: depth / L)
  bool operator==(const RetrainSettings&) const = default;
};

// The whole job config. Paths are absolute once parsed (relative ones resolve against the file).
struct JobSettings {
  std::filesystem::path source;        // the config file, for messages; not part of what is trained
  std::filesystem::path dataset;       // training dataset (HDF5, `lethe ingest`)
  std::filesystem::path test_dataset;  // optional: default data for `lethe eval`
  std::filesystem::path backbone;      // backbone weights (HDF5): written by `lethe pretrain`, read by train
  std::filesystem::path trunk;         // model.trunk: a frozen TorchScript trunk under the blocks; empty: none
  std::filesystem::path job_dir;       // checkpoints, manifest, config copy
  std::uint64_t seed = 0;
  std::string device = "cpu";  // "cpu" or "cuda"
  int threads = 1;             // torch intra-op threads per rank: fixed so results do not vary
  ModelConfig model;           // model.sites follows s3t.slices (1 without S3T: no adapters)
  TrainingSettings training;
  PretrainSettings pretrain;
  S3TSettings s3t;
  NoisyGdSettings noisy_gd;
  RetrainSettings retrain;
};

// Fills in what the other settings imply: model.sites (s3t.slices, or 1 without S3T), the
// noisy-GD step size when not given (eta = 0: 1/(beta + lambda)) and BMS's uniform deletion
// probabilities when none are given. The parser calls it once; idempotent.
void derive_settings(JobSettings& settings);

// Canonical JSON of every setting (config.json in the job directory, and the manifest's copy).
// Paths are written relative to `base` when one is given (the job directory: a job stays movable).
[[nodiscard]] nlohmann::json to_json(const JobSettings& settings, const std::filesystem::path& base = {});
// The inverse; relative paths resolve against `base`. TrainerError (kDamaged) naming `origin` and
// the key when a value is missing or of the wrong type.
[[nodiscard]] JobSettings job_settings_from_json(const nlohmann::json& json, const std::filesystem::path& base,
                                                 const std::string& origin);
// Hex digest of every setting that influences training results (paths excluded: where files live
// changes nothing; device and threads may change rounding, so they count). In every checkpoint.
[[nodiscard]] std::string config_digest(const JobSettings& settings);

}  // namespace lethe::trainer
