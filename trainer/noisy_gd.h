// trainer/noisy_gd.h — softmax regression trained by noisy full-batch GD, data-parallel over a
// Communicator, whose records are deleted by K_U more noisy steps with a certificate (DESIGN.md §4).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "storage/checkpoint_store.h"
#include "trainer/accountant.h"
#include "trainer/job_settings.h"

namespace lethe::trainer {

// Any misuse of the noisy-GD model: shapes, labels, counts, a checkpoint that does not fit.
class NoisyGdError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// phi(x) = [x, 1] / ||[x, 1]|| row by row: (rows, d) floating -> (rows, d + 1) float64 with
// norm 1, so the bias is a weight like the others and the per-example gradient norm is <= sqrt 2.
[[nodiscard]] at::Tensor normalize_features(const at::Tensor& features);

// Standard normal noise of step `step` of run `seed`, (rows, cols) float64: a counter-based
// generator (splitmix64 + Box-Muller), so every rank and every run draws the same values.
[[nodiscard]] at::Tensor step_noise(std::uint64_t seed, std::int64_t step, std::int64_t rows, std::int64_t cols);

// {"lambda", "eta", "sigma", "clip", "beta"}: as checkpoints, receipts and the manifest store them.
[[nodiscard]] nlohmann::json params_json(const NoisyGdParams& params);
// The inverse; nlohmann::json::exception when a key is missing or not a number.
[[nodiscard]] NoisyGdParams params_from_json(const nlohmann::json& json);

struct NoisyGdConfig {
  NoisyGdSettings settings;          // the job's `noisy_gd:` section: params, train_steps, target_epsilon, delta
  std::int64_t num_features = 0;     // columns of normalized features (bias input included)
  std::int64_t num_classes = 0;      // >= 2
  std::uint64_t seed = 0;            // the noise stream
};

// Rows of one gradient tile: the gradient is computed tile by tile, a tile being at most this
// many consecutive rows of one block (a block of more rows is cut into tiles from its first row).
inline constexpr std::int64_t kNoisyGdTileRows = 256;

// This rank's share of the current dataset: normalized features (rows, num_features) and labels
// (rows) int64 in [0, num_classes). Ranks hold disjoint shares; any rank may hold none.
//
// The records are grouped in blocks: consecutive rows, block k ending at row block_ends[k]
// (cumulative, strictly increasing, the last one = rows; empty = all local rows form one block).
// Each block's share of the gradient is computed alone, with the same float operations wherever
// it lies, and summed exactly: a model is bit-identical for any assignment of whole blocks to
// ranks (load_noisy_gd_share() gives blocks of dataset rows; see kNoisyGdBlockRows).
struct LocalData {
  at::Tensor features;
  at::Tensor labels;
  std::vector<std::int64_t> block_ends;
};

// What one deletion did and certifies: the receipt part of the noisy-GD route.
struct DeletionReceipt {
  std::int64_t deleted = 0;
  std::int64_t n_before = 0;
  std::int64_t n_after = 0;
  std::int64_t unlearning_steps = 0;  // K_U from the accountant
  std::int64_t steps_run = 0;         // K_U, or train_steps when it retrained
  bool retrained = false;             // K_U > train_steps: retrained from scratch instead
  double epsilon = 0.0;               // of the deletion; 0 after a retrain (exact)
  double delta = 0.0;
  double alpha = 0.0;                 // +inf when epsilon is 0
  double z = 0.0;                     // distance bound the K_U steps started from
  double dp_epsilon = 0.0;            // DP of the remaining records after this deletion
  NoisyGdParams assumptions;          // lambda, eta, sigma, clip, beta
  double gradient_bound = 0.0;        // M
  bool certified = true;              // false when clip < sqrt 2
  double wall_seconds = 0.0;
};
[[nodiscard]] nlohmann::json to_json(const DeletionReceipt& receipt);

// The model: weights theta (num_features, num_classes) float64, the accountant's history and the
// noise step counter. Every method that takes LocalData is collective over `comm`.
class NoisyGdModel {
 public:
  // theta = 0, nothing trained yet. Throws AccountantError / NoisyGdError on a bad config.
  NoisyGdModel(NoisyGdConfig config, comm::Communicator& comm);

  // Trains from theta = 0 for config.train_steps steps on the data all ranks hold; the
  // accountant starts a new history for the global n.
  void train(const LocalData& data);
  // `remaining` is this rank's share without the deleted records. Runs K_U noisy steps on it
  // from the current theta (or retrains when that is cheaper) and returns the receipt.
  [[nodiscard]] DeletionReceipt delete_records(const LocalData& remaining);
  // `steps` noisy GD steps on `data` from the current theta, recorded as a training phase.
  void continue_training(const LocalData& data, std::int64_t steps);

  // Per-example cross-entropy (without the regularizer), float64 (rows). Local, not collective.
  [[nodiscard]] at::Tensor example_losses(const at::Tensor& features, const at::Tensor& labels) const;
  // Predicted classes, int64 (rows). Local.
  [[nodiscard]] at::Tensor predict(const at::Tensor& features) const;
  // Fraction of correctly classified records over all ranks' shares. Collective.
  [[nodiscard]] double accuracy(const LocalData& data);
  // The full gradient of F_D at the current theta, clipped per example, all-reduced. Collective.
  // Each tile's partial sum X_t^T R_t (float64, trainer/noisy_gd_kernel.h) is rounded to a
  // fixed-point int64 (2^-42 resolution up to n = 2^20, one bit less per doubling of n; n above
  // 2^32 is refused) and the integers are summed exactly, so the result, and every trained model,
  // is bit-identical for any assignment of whole blocks (LocalData::block_ends) to ranks.
  [[nodiscard]] at::Tensor full_gradient(const LocalData& data);

  [[nodiscard]] const at::Tensor& weights() const { return weights_; }
  [[nodiscard]] const NoisyGdConfig& config() const { return config_; }
  [[nodiscard]] const Accountant& accountant() const;
  [[nodiscard]] std::int64_t steps_taken() const { return step_; }

  // Commits theta, the accountant history, the config and the step counter as a new version of
  // series `name`, with `extra` (a JSON object: what it was trained on) added to its metadata.
  // Call on one rank (every rank holds the same model).
  storage::CheckpointInfo save(storage::CheckpointStore& store, const std::string& name,
                               const nlohmann::json& extra = nlohmann::json::object()) const;
  // The latest version of `name`; NoisyGdError if it is not a noisy-GD checkpoint.
  [[nodiscard]] static NoisyGdModel load(const storage::CheckpointStore& store, const std::string& name,
                                         comm::Communicator& comm);
  // Version `version` of `name` (e.g. the one a job manifest names), with the same checks.
  [[nodiscard]] static NoisyGdModel load(const storage::CheckpointStore& store, const std::string& name, int version,
                                         comm::Communicator& comm);

 private:
  void check_features(const at::Tensor& features, const char* what) const;
  void check_data(const LocalData& data, const char* what) const;
  // Clipped, all-reduced full gradient for a global count n already known.
  [[nodiscard]] at::Tensor gradient(const LocalData& data, std::int64_t n);
  [[nodiscard]] std::int64_t global_count(const LocalData& data);
  [[nodiscard]] static NoisyGdModel from_checkpoint(const storage::Checkpoint& checkpoint, comm::Communicator& comm);
  void run_steps(const LocalData& data, std::int64_t n, std::int64_t steps);

  NoisyGdConfig config_;
  comm::Communicator* comm_;
  at::Tensor weights_;
  std::optional<Accountant> accountant_;  // set by train() or load()
  std::int64_t step_ = 0;                 // noise index of the next step, never reused
};

}  // namespace lethe::trainer
